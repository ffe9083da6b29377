"""RouterOSDriver against the simulator when things go wrong, each test ending in recovery.

API unreachable, a timeout mid-command, `!trap`, `!fatal`, a reboot in the middle of an
apply: afterwards the router holds exactly the intended configuration, and nothing of
the customer's (untagged) was touched.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable

import pytest

from drivers.errors import NeedsHumanError, RetryableError
from drivers.router.routeros import commands as c
from drivers.router.routeros.driver import RouterOSDriver
from drivers.types import VoipPath
from hil.sims.routeros import RouterOSSim
from tests.contract.harness import PASSWORD, SBC, USER, eventually, routeros_policy, untagged
from tests.helpers.routeros import make_driver

POLICY = routeros_policy()




def tagged(sim: RouterOSSim) -> list[str]:
    """The agent's configuration items (not its boot marker), as their tags."""
    out = []
    for items in sim.snapshot().values():
        for item in items:
            role = c.role_of(item.get("comment"))
            if role is not None and not role.startswith(c.BOOT_ROLE):
                out.append(item["comment"])
    return sorted(out)


def intended(sim: RouterOSSim) -> list[str]:
    dialect = c.V7 if sim.profile.v7 else c.V6
    return sorted(d.tag for d in c.build(POLICY, dialect))


async def assert_exact(sim: RouterOSSim, driver: RouterOSDriver, customer: object) -> None:
    assert tagged(sim) == intended(sim)  # every item once, nothing stale
    state = await driver.read_state()
    assert state.drift == () and state.policy_installed
    assert untagged(sim.snapshot()) == customer


def in_flight(sim: RouterOSSim) -> list[str]:
    """Command words the simulator is running now (peeks at its sessions)."""
    return [cmd.word for session in list(sim._server.sessions)
            for _, cmd in list(session.running.values())]


async def wait_in_flight(sim: RouterOSSim, word: str) -> None:
    """Until the (slowed) command `word` is on its way: the moment to pull the rug."""
    await eventually(lambda: word in in_flight(sim), 3.0)


def writes(sim: RouterOSSim, since: int) -> list[str]:
    return [e["command"] for e in sim.command_log[since:]
            if e["command"].rsplit("/", 1)[-1] in ("add", "set", "remove", "move")]


# --- unreachable ------------------------------------------------------------------------


async def test_unreachable_router_is_retryable_and_backs_off() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    driver = RouterOSDriver(host="127.0.0.1", port=port, username=USER, password=PASSWORD,
                            plain_api=True, timeout_s=1.0, backoff_min_s=5.0)
    with pytest.raises(RetryableError, match="refused the connection"):
        await driver.open()
    with pytest.raises(RetryableError, match="tries again in"):
        await driver.open()  # no hammering: the back-off holds the next attempt
    await driver.close()


async def test_router_away_then_back(sim: RouterOSSim, driver: RouterOSDriver) -> None:
    customer = untagged(sim.snapshot())
    sim.reboot(downtime_s=0.2)
    with pytest.raises(RetryableError):
        await driver.apply_policy(POLICY)
    await eventually(_succeeds(lambda: driver.apply_policy(POLICY)), 5.0)
    await assert_exact(sim, driver, customer)


def _succeeds(action: Callable[[], object]) -> Callable[[], object]:
    async def attempt() -> bool:
        try:
            await action()  # type: ignore[misc]
        except RetryableError:
            return False
        return True

    return attempt


# --- a timeout mid-command ---------------------------------------------------------------


async def test_timeout_mid_apply_is_retried_on_a_fresh_session(sim: RouterOSSim) -> None:
    customer = untagged(sim.snapshot())
    driver = make_driver(sim, timeout_s=0.2)  # a command's deadline: 2 x 0.2 s
    await driver.open()
    generation = driver.control.generation
    sim.slow(5.0, count=1, path="/ip/firewall/filter/add")  # far past the deadline
    started = time.monotonic()
    await driver.apply_policy(POLICY)
    assert time.monotonic() - started < 2.0  # the deadline cut it short, not the router
    assert driver.control.generation == generation + 1  # the stale session was dropped
    await assert_exact(sim, driver, customer)
    await driver.close()


async def test_a_router_that_stays_slow_fails_then_recovers(sim: RouterOSSim) -> None:
    customer = untagged(sim.snapshot())
    driver = make_driver(sim, timeout_s=0.2)
    await driver.open()
    sim.slow(5.0, count=None, path="/ip/firewall/mangle/add")
    with pytest.raises(RetryableError, match="did not answer"):
        await driver.apply_policy(POLICY)
    sim.clear_slow()
    await eventually(_succeeds(lambda: driver.apply_policy(POLICY)), 5.0)
    await assert_exact(sim, driver, customer)
    await driver.close()


# --- !trap -------------------------------------------------------------------------------


async def test_permission_trap_mid_apply_needs_a_human_then_recovers(
        sim: RouterOSSim, driver: RouterOSDriver) -> None:
    customer = untagged(sim.snapshot())
    full = next(g["policy"] for g in sim.items("/user/group") if g["name"] == "full")
    sim.slow(0.3, count=1, path="/ip/firewall/mangle/add")
    task = asyncio.create_task(driver.apply_policy(POLICY))
    await wait_in_flight(sim, "/ip/firewall/mangle/add")
    sim.set_group_policy("full", "read,api,test")  # someone takes `write` away
    with pytest.raises(NeedsHumanError, match="api,read,write,test"):
        await task
    sim.set_group_policy("full", full)
    await driver.apply_policy(POLICY)
    await assert_exact(sim, driver, customer)


async def test_item_removed_under_a_repair_is_read_again(
        sim: RouterOSSim, driver: RouterOSDriver) -> None:
    customer = untagged(sim.snapshot())
    await driver.apply_policy(POLICY)
    rule = next(i for i in sim.items("/ip/firewall/filter")
                if i.get("comment") == f"{c.TAG}allow-rtp")
    sim.db.set("/ip/firewall/filter", {".id": rule[".id"], "disabled": "true"})  # by hand
    sim.slow(0.3, count=1, path="/ip/firewall/filter/set")
    task = asyncio.create_task(driver.apply_policy(POLICY))
    await wait_in_flight(sim, "/ip/firewall/filter/set")
    sim.db.remove("/ip/firewall/filter", {".id": rule[".id"]})  # and then deleted it
    await task  # the set trapped `no such item`; the apply read again and re-added it
    await assert_exact(sim, driver, customer)


async def test_missing_interfaces_are_refused_before_any_change(
        sim: RouterOSSim, driver: RouterOSDriver) -> None:
    before = sim.snapshot()
    with pytest.raises(NeedsHumanError, match="no interface lan9"):
        await driver.apply_policy(routeros_policy(lan="lan9"))
    with pytest.raises(RetryableError, match="no interface lte9 for the LTE link"):
        await driver.apply_policy(routeros_policy(cellular="lte9"))
    assert untagged(sim.snapshot()) == untagged(before) and tagged(sim) == []


# --- !fatal ------------------------------------------------------------------------------


async def test_fatal_mid_apply_reconnects_and_finishes(
        sim: RouterOSSim, driver: RouterOSDriver) -> None:
    customer = untagged(sim.snapshot())
    generation = driver.control.generation
    sim.slow(0.3, count=1, path="/ip/firewall/nat/add")
    task = asyncio.create_task(driver.apply_policy(POLICY))
    await wait_in_flight(sim, "/ip/firewall/nat/add")
    sim.drop_connections(fatal="session terminated on request")
    await task
    assert driver.control.generation > generation
    await assert_exact(sim, driver, customer)


async def test_fatal_while_idle_costs_one_reconnect(sim: RouterOSSim,
                                                   driver: RouterOSDriver) -> None:
    await driver.apply_policy(POLICY)
    sim.drop_connections(fatal="session terminated on request")
    await eventually(lambda: sim.client_count == 0, 2.0)
    await driver.set_voip_path(VoipPath.CELLULAR)  # a stale session is found and replaced
    assert (await driver.read_state()).voip_path is VoipPath.CELLULAR


# --- reboot ------------------------------------------------------------------------------


async def test_reboot_in_the_middle_of_an_apply(sim: RouterOSSim,
                                                driver: RouterOSDriver) -> None:
    customer = untagged(sim.snapshot())
    before = await driver.interface_counters("ether10")
    sim.add_traffic("ether10", tx_bytes=1_000_000)
    sim.slow(0.5, count=1, path="/ip/firewall/filter/add")
    task = asyncio.create_task(driver.apply_policy(POLICY))
    await wait_in_flight(sim, "/ip/firewall/filter/add")
    assert 0 < len(tagged(sim)) < len(intended(sim))  # half applied
    sim.reboot(downtime_s=0.2)
    with pytest.raises(RetryableError):
        await task
    await eventually(_succeeds(lambda: driver.apply_policy(POLICY)), 5.0)
    await assert_exact(sim, driver, customer)
    after = await driver.interface_counters("ether10")
    assert after.boot_id != before.boot_id and after.tx_bytes == 0  # a reset, told as one


async def test_boot_id_survives_reconnects_and_agent_restarts(
        sim: RouterOSSim, driver: RouterOSDriver) -> None:
    first = await driver.interface_counters("ether10")
    sim.drop_connections()
    await eventually(lambda: sim.client_count == 0, 2.0)
    assert (await driver.interface_counters("ether10")).boot_id == first.boot_id
    restarted = make_driver(sim)  # a new agent process
    try:
        assert (await restarted.interface_counters("ether10")).boot_id == first.boot_id
    finally:
        await restarted.close()
    sim.reboot()
    await eventually(lambda: sim.client_count == 0, 2.0)
    rebooted = await driver.interface_counters("ether10")
    assert rebooted.boot_id != first.boot_id
    assert (await driver.read_state()).notices  # "The router restarted ..."


# --- conntrack ---------------------------------------------------------------------------


async def test_flush_tolerates_entries_that_expire_meanwhile(
        sim: RouterOSSim, driver: RouterOSDriver) -> None:
    await driver.apply_policy(POLICY)
    sip = sim.add_connection("192.168.88.10:5060", f"{SBC}:5060")
    sim.add_connection("192.168.88.10:40002", f"{SBC}:10002")
    sim.add_connection("192.168.88.10:40003", "203.0.113.100:10004")  # media prefix, RTP
    web = sim.add_connection("192.168.88.10:40080", "203.0.113.80:443", protocol="tcp")
    sim.slow(0.3, count=1, path="/ip/firewall/connection/remove")
    task = asyncio.create_task(driver.flush_voip_conntrack())
    await wait_in_flight(sim, "/ip/firewall/connection/remove")
    sim.expire_connection(sip)  # the SIP entry times out between print and remove
    assert await task == 2
    assert [e[".id"] for e in sim.connections()] == [web]


async def test_active_calls_counts_recent_rtp_once_with_rtcp(
        sim: RouterOSSim, driver: RouterOSDriver) -> None:
    await driver.apply_policy(POLICY)
    assert await driver.active_calls() == 0
    sim.add_connection("192.168.88.10:5060", f"{SBC}:5060", orig_rate=4000)  # SIP: no call
    sim.add_connection("192.168.88.10:40002", f"{SBC}:10002", orig_rate=87000)
    sim.add_connection("192.168.88.10:40003", f"{SBC}:10003", orig_rate=1000)  # its RTCP
    sim.add_connection("192.168.88.11:40002", f"{SBC}:10008", timeout_s=60)  # quiet 2 min
    assert await driver.active_calls() == 1


# --- one command in flight -----------------------------------------------------------------


async def test_one_command_in_flight(sim: RouterOSSim, driver: RouterOSDriver) -> None:
    await driver.apply_policy(POLICY)
    sim.slow(0.02, count=None)
    peak = 0
    stop = threading.Event()

    def watch() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, sim.commands_in_flight)
            time.sleep(0.002)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        await asyncio.gather(driver.read_state(), driver.interface_counters("ether10"),
                             driver.link_status("ether10"), driver.active_calls(),
                             driver.set_voip_path(VoipPath.CELLULAR))
    finally:
        stop.set()
        watcher.join()
        sim.clear_slow()
    assert peak == 1
