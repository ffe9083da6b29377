"""The modem recovery rules (pure): thresholds, back-off, calls on LTE, truly dead, events."""

from __future__ import annotations

from agent.modem.recovery import (
    EVENT_RADIO_OFF,
    EVENT_RECOVERED,
    EVENT_RESET,
    EVENT_RESET_DEFERRED,
    EVENT_RESET_FAILED,
    EVENT_SIM_MISSING,
    EVENT_UNRESPONSIVE,
    Action,
    Outcome,
    RecoveryPolicy,
    RecoveryState,
    after_reset,
    step,
)
from drivers.types import Registration, SignalReport, SimState

P = RecoveryPolicy(fail_threshold=3, dead_after_s=300, sim_missing_s=120, radio_off_s=120,
                   backoff_initial_s=300, backoff_max_s=1200, stable_s=900)
OK = SignalReport(Registration.HOME, sim_state=SimState.READY, radio_on=True, rsrp_dbm=-90)
NO_SIM = SignalReport(Registration.NOT_REGISTERED, sim_state=SimState.ABSENT, radio_on=True)
RADIO_OFF = SignalReport(Registration.NOT_REGISTERED, sim_state=SimState.READY, radio_on=False)


class Run:
    """Feed polls 30 s apart and keep every action and event."""

    def __init__(self) -> None:
        self.state = RecoveryState()
        self.now = 0.0
        self.actions: list[tuple[float, Action]] = []
        self.events: list[str] = []

    def poll(self, outcome: Outcome, report: SignalReport | None = None, calls: bool = False,
             n: int = 1, every: float = 30.0) -> Action:
        action = Action.NONE
        for _ in range(n):
            self.state, d = step(self.state, self.now, outcome, report, calls, P)
            action = d.action
            self.actions.append((self.now, d.action))
            self.events += [k for k, _ in d.events]
            if d.action is Action.RESET:
                self.state, evs = after_reset(self.state, self.now, None)
                self.events += [k for k, _ in evs]
            self.now += every
        return action

    def resets(self) -> list[float]:
        return [t for t, a in self.actions if a is Action.RESET]


def test_healthy_modem_is_left_alone():
    r = Run()
    r.poll(Outcome.OK, OK, n=50)
    assert r.resets() == [] and r.events == []


def test_no_answer_three_times_resets_and_reports():
    r = Run()
    r.poll(Outcome.OK, OK)
    r.poll(Outcome.NO_ANSWER, n=2)
    assert r.resets() == []
    assert r.poll(Outcome.NO_ANSWER) is Action.RESET
    assert r.events == [EVENT_UNRESPONSIVE, EVENT_RESET]
    r.poll(Outcome.OK, OK)
    assert r.events[-1] == EVENT_RECOVERED


def test_garbled_answers_count_too():
    r = Run()
    r.poll(Outcome.GARBLED, n=3)
    assert len(r.resets()) == 1


def test_backoff_doubles_to_the_cap():
    r = Run()
    r.poll(Outcome.NO_ANSWER, n=200)  # 100 minutes of silence
    gaps = [b - a for a, b in zip(r.resets(), r.resets()[1:], strict=False)]
    assert gaps[:3] == [300.0, 600.0, 1200.0]
    assert all(g == 1200.0 for g in gaps[3:])
    assert r.events.count(EVENT_UNRESPONSIVE) == 1


def test_backoff_starts_over_after_a_stable_spell():
    r = Run()
    r.poll(Outcome.NO_ANSWER, n=3)
    r.poll(Outcome.OK, OK, n=40)  # 20 min healthy > stable_s
    assert r.state.resets == 0
    r.poll(Outcome.NO_ANSWER, n=3)
    assert len(r.resets()) == 2


def test_never_reset_with_calls_on_lte_unless_truly_dead():
    r = Run()
    r.poll(Outcome.OK, OK)
    assert r.poll(Outcome.NO_ANSWER, calls=True, n=5) is Action.DEFER
    assert r.resets() == [] and r.events.count(EVENT_RESET_DEFERRED) == 1
    # 300 s after the last answer it is truly dead: reset even with calls up
    r.poll(Outcome.NO_ANSWER, calls=True, n=6)
    assert len(r.resets()) == 1
    reset_event = [e for e in r.events if e == EVENT_RESET]
    assert reset_event


def test_sim_missing_after_it_was_seen():
    r = Run()
    r.poll(Outcome.OK, OK)
    r.poll(Outcome.OK, NO_SIM, n=4)  # 90 s: within grace
    assert r.resets() == []
    r.poll(Outcome.OK, NO_SIM)  # 120 s
    assert len(r.resets()) == 1 and EVENT_SIM_MISSING in r.events
    r.poll(Outcome.OK, NO_SIM, n=3)  # grace restarts after the reset: no second yet
    assert len(r.resets()) == 1
    r.poll(Outcome.OK, OK)
    assert r.events[-1] == EVENT_RECOVERED


def test_a_box_installed_without_a_sim_is_not_reset_forever():
    r = Run()
    r.poll(Outcome.OK, NO_SIM, n=100)
    assert r.resets() == []


def test_radio_off_first_turns_it_on_then_resets():
    r = Run()
    r.poll(Outcome.OK, OK)
    r.poll(Outcome.OK, RADIO_OFF, n=4)
    assert r.poll(Outcome.OK, RADIO_OFF) is Action.RADIO_ON
    assert EVENT_RADIO_OFF in r.events
    r.poll(Outcome.OK, RADIO_OFF, n=3)
    assert r.resets() == []
    r.poll(Outcome.OK, RADIO_OFF, n=2)
    assert len(r.resets()) == 1


def test_radio_on_works_without_a_reset():
    r = Run()
    r.poll(Outcome.OK, RADIO_OFF, n=5)
    assert r.actions[-1][1] is Action.RADIO_ON
    r.poll(Outcome.OK, OK)
    assert r.events == [EVENT_RADIO_OFF, EVENT_RECOVERED] and r.resets() == []


def test_failed_reset_is_reported():
    s, evs = after_reset(RecoveryState(problem="unresponsive"), 10.0, "no answer")
    assert [k for k, _ in evs] == [EVENT_RESET_FAILED] and s.failures == 0


def test_no_false_recovery_while_still_failing_after_a_reset():
    r = Run()
    r.poll(Outcome.NO_ANSWER, n=3)
    r.poll(Outcome.NO_ANSWER, n=2)  # counts restart after the reset
    assert EVENT_RECOVERED not in r.events
