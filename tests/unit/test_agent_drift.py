"""Drift and tampering on the router: reported once per distinct drift, repaired unless
the config says to leave it; a changed serial number is a tamper event."""

from __future__ import annotations

import pytest

from agent.app import Agent
from agent.clock import ManualClock
from agent.config import load_settings
from agent.domain import EventKind
from agent.store import Store
from drivers.types import RouterIdentity, RouterState
from tests.helpers.fake_router import FakeRouter

CONFIG = """
[agent]
device_id = "site-1"
[router]
reapply_on_drift = {reapply}
[links.primary]
interface = "wan0"
[links.cellular]
interface = "lte0"
[voip]
lan_interfaces = ["lan0"]
sbc_addresses = ["203.0.113.10"]
"""


def make_agent(tmp_path, reapply: bool) -> tuple[Agent, FakeRouter, Store]:
    path = tmp_path / "agent.toml"
    path.write_text(CONFIG.format(reapply=str(reapply).lower()))
    store = Store(tmp_path / "agent.db")
    router = FakeRouter()
    return Agent(load_settings(path), router, store, ManualClock()), router, store


def kinds(store: Store) -> list[EventKind]:
    return [e.event.kind for e in store.events()]


@pytest.mark.parametrize("reapply", [True, False])
async def test_drift_is_reported_once_and_repaired_when_configured(tmp_path, reapply):
    agent, router, store = make_agent(tmp_path, reapply)
    router.policy = agent.policy
    router.drift = ("the cellular routing table 4241 has no default route",)
    await agent._check_drift()
    if reapply:
        assert router.calls.count("apply_policy") == 1
        assert router.drift == ()  # the fake router is repaired by apply_policy
    else:
        assert "apply_policy" not in router.calls
        await agent._check_drift()  # the same drift again: no second event
    assert kinds(store) == [EventKind.ROUTER_DRIFT]
    assert store.events()[0].event.data["repaired"] is reapply


async def test_changed_serial_is_a_tamper_event_also_across_restarts(tmp_path):
    agent, router, store = make_agent(tmp_path, True)
    router.policy = agent.policy
    first = RouterState(True, router.path, identity=RouterIdentity("A1B2", "RB2011", "r", "7.18"))
    agent._report_identity_and_notices(first)
    assert kinds(store) == []
    # A new agent process later meets a different router: swapped or factory-reset.
    agent2 = Agent(agent.settings, router, store, ManualClock())
    swapped = RouterState(
        True,
        router.path,
        identity=RouterIdentity("ZZ99", "RB2011", "r", "7.18"),
        notices=("the router restarted",),
    )
    agent2._report_identity_and_notices(swapped)
    assert kinds(store) == [EventKind.ROUTER_NOTICE, EventKind.ROUTER_TAMPER]
    tamper = store.events()[-1].event.data
    assert tamper["was"]["serial"] == "A1B2" and tamper["now"]["serial"] == "ZZ99"
