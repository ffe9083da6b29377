"""Pure: when to turn the radio on, when to reset the modem, and when to hold off.

One `step` per poll: what the poll found (a report, no answer, or a garbled answer), the
time, and whether calls are on LTE right now. It returns the new state, the action and
the events for the provider. The rules:

- Problems: no answer (`fail_threshold` failed polls in a row), the SIM gone (absent, not
  ready or failed for `sim_missing_s`, after it was once seen ready), the radio off for
  `radio_off_s`.
- The radio off is first answered by turning it on; a reset follows only if it stays off.
- Resets back off: `backoff_initial_s`, doubling to `backoff_max_s`; the count starts over
  once the modem has been healthy for `stable_s`.
- Never reset while calls are on LTE, unless the modem is truly dead: no answer at all for
  `dead_after_s` (then the calls are not going anywhere either). A deferral is reported
  once per episode.
- Every problem, reset, deferral and recovery is an event; repeats are not.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace
from typing import Any

from drivers.types import SignalReport, SimState

EVENT_UNRESPONSIVE = "modem_unresponsive"
EVENT_SIM_MISSING = "modem_sim_missing"
EVENT_RADIO_OFF = "modem_radio_off"
EVENT_RESET = "modem_reset"
EVENT_RESET_DEFERRED = "modem_reset_deferred"
EVENT_RESET_FAILED = "modem_reset_failed"
EVENT_RECOVERED = "modem_recovered"

_PROBLEM_EVENTS = {
    "unresponsive": EVENT_UNRESPONSIVE,
    "sim_missing": EVENT_SIM_MISSING,
    "radio_off": EVENT_RADIO_OFF,
}


class Outcome(enum.StrEnum):
    OK = "ok"
    NO_ANSWER = "no_answer"
    GARBLED = "garbled"


class Action(enum.StrEnum):
    NONE = "none"
    RADIO_ON = "radio_on"
    RESET = "reset"
    DEFER = "defer"


@dataclass(frozen=True)
class RecoveryPolicy:
    fail_threshold: int = 3
    dead_after_s: float = 300.0
    sim_missing_s: float = 120.0
    radio_off_s: float = 120.0
    backoff_initial_s: float = 300.0
    backoff_max_s: float = 3600.0
    stable_s: float = 900.0


@dataclass(frozen=True)
class RecoveryState:
    failures: int = 0
    first_failure_s: float | None = None
    last_ok_s: float | None = None
    sim_seen_ready: bool = False
    sim_missing_since_s: float | None = None
    radio_off_since_s: float | None = None
    radio_on_tried_s: float | None = None
    #: Resets since the modem was last stable; drives the back-off.
    resets: int = 0
    not_before_s: float = 0.0
    #: The problem being handled, and since when.
    problem: str | None = None
    problem_since_s: float | None = None
    deferred: bool = False
    healthy_since_s: float | None = None


@dataclass(frozen=True)
class Decision:
    action: Action
    problem: str | None = None
    truly_dead: bool = False
    events: tuple[tuple[str, dict[str, Any]], ...] = ()


_SIM_GONE = (SimState.ABSENT, SimState.NOT_READY, SimState.FAILED)


def _observe(
    s: RecoveryState, now: float, outcome: Outcome, report: SignalReport | None
) -> RecoveryState:
    if outcome is not Outcome.OK or report is None:
        return replace(
            s,
            failures=s.failures + 1,
            first_failure_s=s.first_failure_s if s.first_failure_s is not None else now,
            healthy_since_s=None,
        )
    s = replace(s, failures=0, first_failure_s=None, last_ok_s=now)
    if report.sim_state is SimState.READY:
        s = replace(s, sim_seen_ready=True, sim_missing_since_s=None)
    elif report.sim_state in _SIM_GONE and s.sim_seen_ready:
        since = s.sim_missing_since_s
        s = replace(s, sim_missing_since_s=since if since is not None else now)
    if report.radio_on is False:
        since = s.radio_off_since_s
        s = replace(s, radio_off_since_s=since if since is not None else now)
    elif report.radio_on is True:
        s = replace(s, radio_off_since_s=None, radio_on_tried_s=None)
    return s


def _problem(s: RecoveryState, now: float, p: RecoveryPolicy) -> str | None:
    if s.failures >= p.fail_threshold:
        return "unresponsive"
    if s.sim_missing_since_s is not None and now - s.sim_missing_since_s >= p.sim_missing_s:
        return "sim_missing"
    if s.radio_off_since_s is not None and now - s.radio_off_since_s >= p.radio_off_s:
        return "radio_off"
    return None


def _truly_dead(s: RecoveryState, now: float, p: RecoveryPolicy) -> bool:
    if s.failures < p.fail_threshold:
        return False
    since = s.last_ok_s if s.last_ok_s is not None else s.first_failure_s
    return since is not None and now - since >= p.dead_after_s


def step(
    state: RecoveryState,
    now_s: float,
    outcome: Outcome,
    report: SignalReport | None,
    calls_on_lte: bool,
    policy: RecoveryPolicy | None = None,
) -> tuple[RecoveryState, Decision]:
    p = policy or RecoveryPolicy()
    s = _observe(state, now_s, outcome, report)
    problem = _problem(s, now_s, p)
    dead = _truly_dead(s, now_s, p)
    events: list[tuple[str, dict[str, Any]]] = []

    healthy = (
        outcome is Outcome.OK
        and report is not None
        and report.radio_on is not False
        and not (s.sim_seen_ready and report.sim_state in _SIM_GONE)
    )
    if problem is None and not healthy:
        # Still within a grace time (or right after a reset): the episode goes on.
        return s, Decision(Action.NONE, s.problem, dead, tuple(events))
    if problem is None:
        if s.problem is not None:
            events.append((EVENT_RECOVERED, {
                "problem": s.problem,
                "downtime_s": round(now_s - (s.problem_since_s or now_s), 1),
                "resets": s.resets,
            }))
            s = replace(s, problem=None, problem_since_s=None, deferred=False,
                        healthy_since_s=now_s)
        if s.healthy_since_s is None and outcome is Outcome.OK:
            s = replace(s, healthy_since_s=now_s)
        if s.resets and s.healthy_since_s is not None and now_s - s.healthy_since_s >= p.stable_s:
            s = replace(s, resets=0, not_before_s=0.0)
        return s, Decision(Action.NONE, events=tuple(events))

    if problem != s.problem:
        events.append((_PROBLEM_EVENTS[problem], {"since_s": now_s, "failures": s.failures}))
        s = replace(s, problem=problem, problem_since_s=now_s, deferred=False)

    if problem == "radio_off" and s.radio_on_tried_s is None:
        s = replace(s, radio_on_tried_s=now_s)
        return s, Decision(Action.RADIO_ON, problem, dead, tuple(events))
    if (
        problem == "radio_off"
        and s.radio_on_tried_s is not None
        and now_s - s.radio_on_tried_s < p.radio_off_s
    ):
        return s, Decision(Action.NONE, problem, dead, tuple(events))

    if now_s < s.not_before_s:
        return s, Decision(Action.NONE, problem, dead, tuple(events))
    if calls_on_lte and not dead:
        if not s.deferred:
            events.append((EVENT_RESET_DEFERRED, {"problem": problem, "reason": "calls_on_lte"}))
            s = replace(s, deferred=True)
        return s, Decision(Action.DEFER, problem, dead, tuple(events))

    resets = s.resets + 1
    backoff = min(p.backoff_initial_s * 2 ** (resets - 1), p.backoff_max_s)
    events.append((EVENT_RESET, {
        "problem": problem,
        "attempt": resets,
        "truly_dead": dead,
        "calls_on_lte": calls_on_lte,
        "next_reset_not_before_s": round(backoff, 1),
    }))
    s = replace(s, resets=resets, not_before_s=now_s + backoff, deferred=False,
                healthy_since_s=None)
    return s, Decision(Action.RESET, problem, dead, tuple(events))


def after_reset(
    state: RecoveryState, now_s: float, error: str | None
) -> tuple[RecoveryState, tuple[tuple[str, dict[str, Any]], ...]]:
    """Record a reset's end. Counts restart: the modem gets a fresh chance to answer and to
    find its SIM and network (a SIM still missing is timed again from now)."""
    s = replace(
        state,
        failures=0,
        radio_off_since_s=None,
        radio_on_tried_s=None,
        sim_missing_since_s=now_s if state.sim_missing_since_s is not None else None,
    )
    if error is None:
        return s, ()
    return s, ((EVENT_RESET_FAILED, {"problem": state.problem, "error": error}),)
