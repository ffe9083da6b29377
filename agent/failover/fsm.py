"""The failover state machine: a pure transition table.

`step(state, observation, now_s, config)` returns the next state and the actions to
apply. No I/O, no clock, no logging: the controller does those. The table below is
the whole behaviour; read it top to bottom, first matching row wins.

Principles, each from the providers' terms:
- Fail over at once when the primary is down: calls drop on failover anyway, every
  second of waiting is a second with no phones (911 included).
- On a merely degraded primary, move only when LTE is measurably better for voice,
  and only once that has held for `degraded_hold_s` (LTE costs plan bytes).
- Fail back only after the primary has been healthy for the dwell, and (by default)
  when no call is up, waiting at most `max_call_wait_s`: failback drops calls too.
- Damp flapping: each failback in the last `flap_window_s` doubles the next dwell,
  up to `dwell_max_s`.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, replace

from agent.domain import TO_CELLULAR, TO_PRIMARY, Action, Mode, Verdict
from drivers.types import VoipPath


class InstallerTestSignal(enum.StrEnum):
    START = "start"
    END = "end"


@dataclass(frozen=True)
class FsmConfig:
    dwell_s: float = 120.0
    wait_for_calls: bool = True
    max_call_wait_s: float = 600.0
    degraded_hold_s: float = 10.0
    flap_window_s: float = 1800.0
    dwell_max_s: float = 1800.0


@dataclass(frozen=True)
class Observation:
    """What the monitor knows at one instant."""

    primary: Verdict
    cellular: Verdict
    #: LTE measurably better for voice than the (degraded) primary, right now.
    cellular_better: bool = False
    active_calls: int = 0
    test: InstallerTestSignal | None = None


@dataclass(frozen=True)
class FsmState:
    mode: Mode = Mode.PRIMARY
    path: VoipPath = VoipPath.PRIMARY
    since_s: float = 0.0
    #: When LTE started being measurably better while DEGRADED (None: it is not).
    cellular_better_since_s: float | None = None
    #: Monotonic times of recent failbacks, for damping.
    failbacks_s: tuple[float, ...] = ()


@dataclass(frozen=True)
class Step:
    state: FsmState
    actions: tuple[Action, ...]
    #: The table row's reason, for the event log ("primary down", ...). None: no change.
    reason: str | None


Guard = Callable[[FsmState, Observation, float, FsmConfig], bool]


def effective_dwell_s(state: FsmState, now_s: float, config: FsmConfig) -> float:
    """The dwell, doubled for each failback within the flap window (damping)."""
    recent = sum(1 for t in state.failbacks_s if now_s - t <= config.flap_window_s)
    return min(config.dwell_max_s, config.dwell_s * (2**recent))


# --- guards: named so that the table reads as sentences -----------------------------


def _test_start(s: FsmState, o: Observation, now: float, c: FsmConfig) -> bool:
    return o.test is InstallerTestSignal.START


def _test_end_primary_ok(s: FsmState, o: Observation, now: float, c: FsmConfig) -> bool:
    return o.test is InstallerTestSignal.END and o.primary is not Verdict.DOWN


def _test_end_primary_down(s: FsmState, o: Observation, now: float, c: FsmConfig) -> bool:
    return o.test is InstallerTestSignal.END and o.primary is Verdict.DOWN


def _primary_down_cellular_usable(s: FsmState, o: Observation, now: float, c: FsmConfig) -> bool:
    # UNKNOWN counts as usable: with the primary dead, trying LTE beats certain silence.
    return o.primary is Verdict.DOWN and o.cellular is not Verdict.DOWN


def _both_down(s: FsmState, o: Observation, now: float, c: FsmConfig) -> bool:
    return o.primary is Verdict.DOWN and o.cellular is Verdict.DOWN


def _primary_degraded(s: FsmState, o: Observation, now: float, c: FsmConfig) -> bool:
    return o.primary is Verdict.DEGRADED


def _primary_up(s: FsmState, o: Observation, now: float, c: FsmConfig) -> bool:
    return o.primary is Verdict.UP


def _primary_not_up(s: FsmState, o: Observation, now: float, c: FsmConfig) -> bool:
    return o.primary is not Verdict.UP


def _primary_not_down(s: FsmState, o: Observation, now: float, c: FsmConfig) -> bool:
    return o.primary in (Verdict.UP, Verdict.DEGRADED)


def _cellular_usable(s: FsmState, o: Observation, now: float, c: FsmConfig) -> bool:
    return o.cellular in (Verdict.UP, Verdict.DEGRADED)


def _cellular_down_primary_up(s: FsmState, o: Observation, now: float, c: FsmConfig) -> bool:
    return o.cellular is Verdict.DOWN and o.primary is Verdict.UP


def _cellular_down_primary_degraded(s: FsmState, o: Observation, now: float, c: FsmConfig) -> bool:
    return o.cellular is Verdict.DOWN and o.primary is Verdict.DEGRADED


def _cellular_better_held(s: FsmState, o: Observation, now: float, c: FsmConfig) -> bool:
    since = s.cellular_better_since_s
    return o.cellular_better and since is not None and now - since >= c.degraded_hold_s


def _dwell_done_no_call(s: FsmState, o: Observation, now: float, c: FsmConfig) -> bool:
    waited = now - s.since_s
    dwell = effective_dwell_s(s, now, c)
    if waited < dwell:
        return False
    if not c.wait_for_calls or o.active_calls == 0:
        return True
    return waited >= dwell + c.max_call_wait_s


# --- the table ------------------------------------------------------------------------

NONE: tuple[Action, ...] = ()

TRANSITIONS: tuple[tuple[Mode, Guard, Mode, tuple[Action, ...], str], ...] = (
    # from             guard                             to               actions      reason
    (Mode.PRIMARY,    _test_start,                      Mode.TEST,       TO_CELLULAR, "installer test started"),
    (Mode.PRIMARY,    _primary_down_cellular_usable,    Mode.CELLULAR,   TO_CELLULAR, "primary down"),
    (Mode.PRIMARY,    _both_down,                       Mode.BOTH_DOWN,  NONE,        "primary and cellular down"),
    (Mode.PRIMARY,    _primary_degraded,                Mode.DEGRADED,   NONE,        "primary degraded"),
    (Mode.DEGRADED,   _test_start,                      Mode.TEST,       TO_CELLULAR, "installer test started"),
    (Mode.DEGRADED,   _primary_down_cellular_usable,    Mode.CELLULAR,   TO_CELLULAR, "primary down"),
    (Mode.DEGRADED,   _both_down,                       Mode.BOTH_DOWN,  NONE,        "primary and cellular down"),
    (Mode.DEGRADED,   _primary_up,                      Mode.PRIMARY,    NONE,        "primary healthy again"),
    (Mode.DEGRADED,   _cellular_better_held,            Mode.CELLULAR,   TO_CELLULAR, "cellular better for voice"),
    (Mode.CELLULAR,   _both_down,                       Mode.BOTH_DOWN,  NONE,        "cellular down too"),
    (Mode.CELLULAR,   _cellular_down_primary_up,        Mode.PRIMARY,    TO_PRIMARY,  "cellular down, primary up"),
    (Mode.CELLULAR,   _cellular_down_primary_degraded,  Mode.DEGRADED,   TO_PRIMARY,  "cellular down, primary degraded"),
    (Mode.CELLULAR,   _primary_up,                      Mode.RECOVERING, NONE,        "primary healthy, dwelling"),
    (Mode.RECOVERING, _both_down,                       Mode.BOTH_DOWN,  NONE,        "both links down"),
    (Mode.RECOVERING, _cellular_down_primary_up,        Mode.PRIMARY,    TO_PRIMARY,  "cellular down, primary up"),
    (Mode.RECOVERING, _primary_not_up,                  Mode.CELLULAR,   NONE,        "primary relapsed during dwell"),
    (Mode.RECOVERING, _dwell_done_no_call,              Mode.PRIMARY,    TO_PRIMARY,  "primary healthy for the dwell"),
    (Mode.BOTH_DOWN,  _primary_not_down,                Mode.PRIMARY,    TO_PRIMARY,  "primary back"),
    (Mode.BOTH_DOWN,  _cellular_usable,                 Mode.CELLULAR,   TO_CELLULAR, "cellular back"),
    (Mode.TEST,       _test_end_primary_ok,             Mode.PRIMARY,    TO_PRIMARY,  "installer test finished"),
    (Mode.TEST,       _test_end_primary_down,           Mode.CELLULAR,   NONE,        "installer test finished, primary down"),
)  # fmt: skip


def step(state: FsmState, obs: Observation, now_s: float, config: FsmConfig) -> Step:
    """Apply the first matching row for the current mode; otherwise stay."""
    tracked = _track_cellular_better(state, obs, now_s)
    for from_mode, guard, to_mode, actions, reason in TRANSITIONS:
        if from_mode is not tracked.mode or not guard(tracked, obs, now_s, config):
            continue
        path = tracked.path
        for action in actions:
            if action.path is not None:
                path = action.path
        failbacks = tracked.failbacks_s
        if tracked.path is VoipPath.CELLULAR and path is VoipPath.PRIMARY:
            recent = (t for t in failbacks if now_s - t <= config.flap_window_s)
            failbacks = (*recent, now_s)
        new_state = FsmState(
            mode=to_mode,
            path=path,
            since_s=now_s,
            cellular_better_since_s=None,
            failbacks_s=failbacks,
        )
        return Step(new_state, actions, reason)
    return Step(tracked, (), None)


def _track_cellular_better(state: FsmState, obs: Observation, now_s: float) -> FsmState:
    """Remember since when LTE has been better while DEGRADED (for degraded_hold_s)."""
    if state.mode is not Mode.DEGRADED or not obs.cellular_better:
        return replace(state, cellular_better_since_s=None)
    if state.cellular_better_since_s is None:
        return replace(state, cellular_better_since_s=now_s)
    return state


def resume(mode: Mode, path: VoipPath, now_s: float) -> FsmState:
    """The state to resume in after a restart or power loss.

    An interrupted installer test is restored to normal (PRIMARY path; the next
    observation fails over again if the primary is really down). RECOVERING resumes as
    CELLULAR: the dwell restarts, because nobody saw the primary during the outage.
    """
    if mode is Mode.TEST:
        return FsmState(Mode.PRIMARY, VoipPath.PRIMARY, now_s)
    if mode is Mode.RECOVERING:
        return FsmState(Mode.CELLULAR, VoipPath.CELLULAR, now_s)
    return FsmState(mode, path, now_s)
