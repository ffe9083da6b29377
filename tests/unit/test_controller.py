"""The controller applies the table's actions through the router and reads them back."""

from __future__ import annotations

import pytest

from agent.clock import ManualClock
from agent.domain import EventKind, Mode, Verdict
from agent.failover.controller import MODE_KEY, FailoverController, PathNotAppliedError
from agent.failover.fsm import FsmConfig, Observation
from agent.store import Store
from drivers.types import VoipPath
from tests.helpers.fake_router import FakeRouter

UP, DOWN = Verdict.UP, Verdict.DOWN


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "agent.db")
    yield s
    s.close()


def kinds(store: Store) -> list[EventKind]:
    return [e.event.kind for e in store.events()]


async def test_failover_sets_path_flushes_and_records(store):
    router, clock = FakeRouter(), ManualClock()
    ctl = FailoverController(router, store, clock, FsmConfig(dwell_s=120))
    await ctl.resume()
    transition = await ctl.observe(Observation(DOWN, UP))
    assert transition is not None and transition.to_mode is Mode.CELLULAR
    assert router.path is VoipPath.CELLULAR
    assert router.calls[-3:] == ["set_path cellular", "read_state", "flush"]
    assert kinds(store) == [EventKind.MODE_CHANGED, EventKind.FAILOVER]
    assert store.get(MODE_KEY)["mode"] == "CELLULAR"


async def test_failback_reports_time_on_cellular(store):
    router, clock = FakeRouter(), ManualClock()
    ctl = FailoverController(router, store, clock, FsmConfig(dwell_s=120))
    await ctl.resume()
    await ctl.observe(Observation(DOWN, UP))
    clock.advance(30)
    await ctl.observe(Observation(UP, UP))  # RECOVERING
    clock.advance(120)
    transition = await ctl.observe(Observation(UP, UP))
    assert transition is not None and transition.to_mode is Mode.PRIMARY
    failback = next(e for e in store.events() if e.event.kind is EventKind.FAILBACK)
    assert failback.event.data["on_cellular_s"] == 150.0
    assert router.path is VoipPath.PRIMARY


async def test_restart_resumes_mode_and_reapplies_path(store):
    router, clock = FakeRouter(), ManualClock()
    ctl = FailoverController(router, store, clock, FsmConfig())
    await ctl.resume()
    await ctl.observe(Observation(DOWN, UP))
    # Power cut: a new router session that lost its rule, a new controller.
    router2 = FakeRouter()
    ctl2 = FailoverController(router2, store, ManualClock(), FsmConfig())
    await ctl2.resume()
    assert ctl2.state.mode is Mode.CELLULAR
    assert router2.path is VoipPath.CELLULAR


async def test_transient_router_error_is_retried(store):
    router, clock = FakeRouter(), ManualClock()
    ctl = FailoverController(router, store, clock, FsmConfig())
    await ctl.resume()
    router.fail_next_set_path = 2
    await ctl.observe(Observation(DOWN, UP))
    assert router.path is VoipPath.CELLULAR
    assert EventKind.ROUTER_ERROR not in kinds(store)


async def test_path_that_does_not_read_back_is_an_error_event(store):
    router, clock = FakeRouter(), ManualClock()
    ctl = FailoverController(router, store, clock, FsmConfig())
    await ctl.resume()
    router.ignore_set_path = True
    with pytest.raises(PathNotAppliedError, match="did not take the VoIP path cellular"):
        await ctl.observe(Observation(DOWN, UP))
    assert kinds(store)[-1] is EventKind.ROUTER_ERROR
    # Nothing was recorded as done: the mode is still PRIMARY, the next observation retries.
    assert ctl.state.mode is Mode.PRIMARY
    router.ignore_set_path = False
    transition = await ctl.observe(Observation(DOWN, UP))
    assert transition is not None and router.path is VoipPath.CELLULAR
