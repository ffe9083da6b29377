"""The agent's failover controller driving the RouterOS driver against the simulator.

The real FailoverController (state machine, verified path changes, conntrack flush,
events, persisted mode) with RouterOSDriver over the real wire protocol: failover and
failback are applied on the router and read back from it, on v6 and v7.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from agent.clock import ManualClock
from agent.domain import EventKind, Mode, Verdict
from agent.failover.controller import FailoverController
from agent.failover.fsm import FsmConfig, Observation
from agent.store import Store
from drivers.router.routeros import commands as c
from drivers.router.routeros.driver import RouterOSDriver
from drivers.types import VoipPath
from hil.sims.routeros import RouterOSSim
from tests.contract.harness import PASSWORD, SBC, USER, routeros_policy, untagged

UP, DOWN = Verdict.UP, Verdict.DOWN
POLICY = routeros_policy()


@pytest.fixture(params=["6.49", "7.17", "7.18"])
def sim(request: pytest.FixtureRequest) -> Iterator[RouterOSSim]:
    with RouterOSSim(profile=request.param, user=USER, password=PASSWORD) as s:
        yield s


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "agent.db")
    yield s
    s.close()


def new_driver(sim: RouterOSSim) -> RouterOSDriver:
    host, port = sim.address
    return RouterOSDriver(host=host, port=port, username=USER, password=PASSWORD,
                          plain_api=True, timeout_s=2.0, backoff_min_s=0.01)


@pytest.fixture
async def driver(sim: RouterOSSim) -> AsyncIterator[RouterOSDriver]:
    made = new_driver(sim)
    await made.open()
    await made.apply_policy(POLICY)
    try:
        yield made
    finally:
        await made.close()


def switch_on(sim: RouterOSSim) -> bool:
    rule = next(i for i in sim.items("/ip/firewall/mangle")
                if i.get("comment") == f"{c.TAG}{c.SWITCH_ROLE}")
    return rule["disabled"] == "false"


def voip_flows(sim: RouterOSSim) -> list[str]:
    return [e["dst-address"] for e in sim.connections() if e["dst-address"].startswith(SBC)]


def kinds(store: Store) -> list[EventKind]:
    return [e.event.kind for e in store.events()]


async def test_failover_and_failback_on_the_router(sim: RouterOSSim, driver: RouterOSDriver,
                                                   store: Store) -> None:
    customer = untagged(sim.snapshot())
    clock = ManualClock()
    controller = FailoverController(driver, store, clock, FsmConfig(dwell_s=120))
    await controller.resume()
    assert not switch_on(sim)

    sim.add_connection("192.168.88.10:5060", f"{SBC}:5060")
    sim.add_connection("192.168.88.10:40002", f"{SBC}:10002")
    web = sim.add_connection("192.168.88.10:40080", "203.0.113.80:443", protocol="tcp")

    transition = await controller.observe(Observation(DOWN, UP))
    assert transition is not None and transition.to_mode is Mode.CELLULAR
    assert transition.conntrack_flushed == 2
    assert switch_on(sim) and voip_flows(sim) == []
    assert web in [e[".id"] for e in sim.connections()]
    assert (await driver.read_state()).voip_path is VoipPath.CELLULAR

    # The phones re-register over LTE; later the primary is healthy for the dwell.
    sim.add_connection("192.168.88.10:5060", f"{SBC}:5060")
    clock.advance(30)
    assert (await controller.observe(Observation(UP, UP))).to_mode is Mode.RECOVERING
    clock.advance(121)
    transition = await controller.observe(Observation(UP, UP))
    assert transition is not None and transition.to_mode is Mode.PRIMARY
    assert transition.conntrack_flushed == 1
    assert not switch_on(sim) and voip_flows(sim) == []
    state = await driver.read_state()
    assert state.voip_path is VoipPath.PRIMARY and state.drift == ()
    assert kinds(store) == [EventKind.MODE_CHANGED, EventKind.FAILOVER,
                            EventKind.MODE_CHANGED,  # RECOVERING
                            EventKind.MODE_CHANGED, EventKind.FAILBACK]
    assert untagged(sim.snapshot()) == customer


async def test_restart_in_failover_resumes_the_path_on_the_router(
        sim: RouterOSSim, driver: RouterOSDriver, store: Store) -> None:
    controller = FailoverController(driver, store, ManualClock(), FsmConfig())
    await controller.resume()
    await controller.observe(Observation(DOWN, UP))
    assert switch_on(sim)
    # Power cut: the router reboots (config persists) and the agent restarts.
    await driver.close()
    sim.reboot()
    fresh = new_driver(sim)
    try:
        await fresh.open()
        await fresh.apply_policy(POLICY)
        resumed = FailoverController(fresh, store, ManualClock(), FsmConfig())
        await resumed.resume()
        assert resumed.state.mode is Mode.CELLULAR
        assert switch_on(sim)
        assert (await fresh.read_state()).voip_path is VoipPath.CELLULAR
    finally:
        await fresh.close()


async def test_a_switch_removed_by_hand_is_rebuilt_by_the_next_failover(
        sim: RouterOSSim, driver: RouterOSDriver, store: Store) -> None:
    controller = FailoverController(driver, store, ManualClock(), FsmConfig())
    await controller.resume()
    rule = next(i for i in sim.items("/ip/firewall/mangle")
                if i.get("comment") == f"{c.TAG}{c.SWITCH_ROLE}")
    sim.db.remove("/ip/firewall/mangle", {".id": rule[".id"]})
    transition = await controller.observe(Observation(DOWN, UP))
    assert transition is not None and transition.to_mode is Mode.CELLULAR
    assert switch_on(sim)
    assert (await driver.read_state()).drift == ()
