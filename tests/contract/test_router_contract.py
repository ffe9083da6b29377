"""The RouterDriver contract, one suite for every router driver (see harness.py).

Runs against the RouterOS simulator (6.49, 7.17, 7.18), the Linux driver in throwaway
network namespaces (as root), and a real MikroTik when an operator names one.
"""

from __future__ import annotations

import asyncio

import pytest

from drivers.errors import NeedsHumanError
from drivers.router.base import RouterDriver
from drivers.types import LinkEvent, VoipPath

from .harness import SBC, WEB, Harness, eventually


async def test_is_a_router_driver(harness: Harness) -> None:
    assert isinstance(await harness.driver(), RouterDriver)


async def test_apply_installs_in_sync_and_twice_changes_nothing(harness: Harness) -> None:
    customer = await harness.customer_config()
    driver = await harness.driver()
    await driver.apply_policy(harness.policy)
    state = await driver.read_state()
    assert state.policy_installed
    assert state.drift == ()
    assert state.voip_path is VoipPath.PRIMARY
    before = await harness.whole_config()
    await driver.apply_policy(harness.policy)
    assert await harness.whole_config() == before
    assert await harness.customer_config() == customer


async def test_switch_is_idempotent_and_reads_back(harness: Harness) -> None:
    customer = await harness.customer_config()
    driver = await harness.driver()
    await driver.apply_policy(harness.policy)
    for _ in range(2):
        await driver.set_voip_path(VoipPath.CELLULAR)
        assert (await driver.read_state()).voip_path is VoipPath.CELLULAR
    for _ in range(2):
        await driver.set_voip_path(VoipPath.PRIMARY)
        assert (await driver.read_state()).voip_path is VoipPath.PRIMARY
    assert (await driver.read_state()).drift == ()
    assert await harness.customer_config() == customer


async def test_apply_does_not_move_the_switch(harness: Harness) -> None:
    driver = await harness.driver()
    await driver.apply_policy(harness.policy)
    await driver.set_voip_path(VoipPath.CELLULAR)
    await driver.apply_policy(harness.policy)
    assert (await driver.read_state()).voip_path is VoipPath.CELLULAR
    await driver.set_voip_path(VoipPath.PRIMARY)


async def test_drift_is_reported_and_apply_repairs_it(harness: Harness) -> None:
    customer = await harness.customer_config()
    driver = await harness.driver()
    await driver.apply_policy(harness.policy)
    await harness.tamper()
    assert (await driver.read_state()).drift
    await driver.apply_policy(harness.policy)
    state = await driver.read_state()
    assert state.drift == () and state.policy_installed
    assert await harness.customer_config() == customer


async def test_read_state_reports_the_sip_helper(harness: Harness) -> None:
    driver = await harness.driver()
    await driver.apply_policy(harness.policy)
    assert (await driver.read_state()).sip_helper_on is False
    await harness.set_sip_helper(True)  # its owner turns it on (back on, on RouterOS)
    assert (await driver.read_state()).sip_helper_on is True
    await harness.set_sip_helper(False)
    assert (await driver.read_state()).sip_helper_on is False


async def test_set_path_on_a_clean_router_needs_a_policy(harness: Harness) -> None:
    driver = await harness.driver()
    await driver.remove_all()
    with pytest.raises(NeedsHumanError, match="apply_policy"):
        await driver.set_voip_path(VoipPath.CELLULAR)


async def test_remove_all_finds_the_agents_items_and_only_them(harness: Harness) -> None:
    customer = await harness.customer_config()
    driver = await harness.driver()
    await driver.apply_policy(harness.policy)
    await driver.set_voip_path(VoipPath.CELLULAR)
    fresh = await harness.driver()  # a fresh process: nothing in memory
    assert await fresh.remove_all() > 0
    assert await fresh.remove_all() == 0
    state = await fresh.read_state()
    assert not state.policy_installed and state.voip_path is None
    assert await harness.customer_config() == customer


async def test_flush_deletes_only_voip_conntrack_entries(harness: Harness) -> None:
    driver = await harness.driver()
    await driver.apply_policy(harness.policy)
    await harness.start_flows()
    assert await harness.flows() >= {(SBC, 5060), (SBC, 10002), (WEB, 8080), (SBC, 9999)}
    assert await driver.flush_voip_conntrack() == 2
    left = await harness.flows()
    assert {(WEB, 8080), (SBC, 9999)} <= left
    assert not {(SBC, 5060), (SBC, 10002)} & left
    assert await driver.flush_voip_conntrack() == 0


async def test_link_status(harness: Harness) -> None:
    driver = await harness.driver()
    status = await driver.link_status(harness.cellular)
    assert status.carrier_up
    if harness.cellular_address:
        assert harness.cellular_address in status.addresses
    assert not (await driver.link_status("gone0")).carrier_up


async def test_counters_move_with_traffic_on_one_boot(harness: Harness) -> None:
    driver = await harness.driver()
    await driver.apply_policy(harness.policy)
    await driver.set_voip_path(VoipPath.CELLULAR)
    before = await driver.interface_counters(harness.cellular)
    await harness.cellular_traffic()

    async def moved() -> object:
        after = await driver.interface_counters(harness.cellular)
        return after if after.tx_packets - before.tx_packets >= 5 else None

    after = await eventually(moved)
    assert after.width_bits == 64 and after.boot_id == before.boot_id
    assert after.tx_bytes > before.tx_bytes
    await driver.set_voip_path(VoipPath.PRIMARY)


async def test_watch_carrier_reports_loss_and_return(harness: Harness) -> None:
    driver = await harness.driver()
    events: asyncio.Queue[LinkEvent] = asyncio.Queue()

    async def consume() -> None:
        async for event in driver.watch_carrier():
            await events.put(event)

    task = asyncio.create_task(consume())
    try:
        # The watch is live once a change shows: pull the cable until one does (bounded).
        for wait_s in (0.1, 0.3, 1.0, 1.5, 2.0):
            await harness.set_carrier(False)
            try:
                await asyncio.wait_for(_next(events, LinkEvent(harness.cellular, False)), wait_s)
                break
            except TimeoutError:
                await harness.set_carrier(True)
        else:
            raise AssertionError("the carrier watch never reported the cellular interface")
        await harness.set_carrier(True)
        await asyncio.wait_for(_next(events, LinkEvent(harness.cellular, True)), 3.0)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await harness.set_carrier(True)


async def _next(events: asyncio.Queue[LinkEvent], wanted: LinkEvent) -> LinkEvent:
    while True:
        event = await events.get()
        if event == wanted:
            return event
