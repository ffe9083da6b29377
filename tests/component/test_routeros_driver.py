"""RouterOSDriver against the simulator: security, privileges, tamper, order, probes, cost.

The shared contract suite (tests/contract) covers what every router driver must do;
these are what only the RouterOS driver does.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import subprocess
from pathlib import Path

import pytest

from drivers import profiles
from drivers.errors import NeedsHumanError, RetryableError, UnsupportedError
from drivers.router.routeros import commands as c
from drivers.router.routeros.driver import RouterOSDriver
from drivers.types import LinkEvent, VoipPath
from hil.sims.routeros import RouterOSSim
from tests.contract.harness import PASSWORD, SBC, USER, eventually, routeros_policy, untagged
from tests.helpers.routeros import make_driver

POLICY = routeros_policy()
WRITES = ("add", "set", "remove", "move", "enable", "disable")




def commands_since(sim: RouterOSSim, mark: int) -> list[str]:
    return [e["command"] for e in sim.command_log[mark:]]


def written(sim: RouterOSSim, mark: int) -> list[str]:
    return [w for w in commands_since(sim, mark) if w.rsplit("/", 1)[-1] in WRITES]


def rule_order(sim: RouterOSSim, menu: str = "/ip/firewall/filter") -> list[str]:
    return [i.get("comment") or i.get("action", "") for i in sim.items(menu)]


# --- TLS and login ---------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
async def test_api_ssl_verifies_the_router_certificate(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=router",
         "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True, timeout=30)
    with RouterOSSim(user=USER, password=PASSWORD, tls_cert=str(cert), tls_key=str(key)) as sim:
        assert sim.tls_address is not None
        host, port = sim.tls_address
        good = RouterOSDriver(host=host, port=port, username=USER, password=PASSWORD,
                              tls_ca_file=str(cert), timeout_s=2.0)
        await good.open()
        await good.apply_policy(POLICY)
        await good.close()
        untrusted = RouterOSDriver(host=host, port=port, username=USER, password=PASSWORD,
                                   timeout_s=2.0)
        with pytest.raises(NeedsHumanError, match=r"did not verify.*tls_ca_file"):
            await untrusted.open()
        await untrusted.close()
        plain_on_tls = RouterOSDriver(host=host, port=sim.address[1], username=USER,
                                      password=PASSWORD, tls_ca_file=str(cert), timeout_s=0.3)
        # api-ssl settings pointed at the plain API port: the handshake fails or never ends.
        with pytest.raises((NeedsHumanError, RetryableError), match="port"):
            await plain_on_tls.open()
        await plain_on_tls.close()


async def test_plain_api_warns_and_defaults_to_8728(caplog: pytest.LogCaptureFixture) -> None:
    from drivers.router.routeros.transport import endpoint

    with caplog.at_level(logging.WARNING):
        ep = endpoint("192.0.2.1", None, "agent", "x", plain_api=True)
    assert ep.port == 8728 and ep.tls is None
    assert "in clear" in caplog.text
    assert endpoint("192.0.2.1", None, "agent", "x").port == 8729


async def test_bad_credentials_need_a_human(sim: RouterOSSim) -> None:
    driver = make_driver(sim, password="wrong", backoff_min_s=5.0)
    with pytest.raises(NeedsHumanError, match="refused the login of 'agent'"):
        await driver.open()
    with pytest.raises(NeedsHumanError, match="refused the login"):
        await driver.open()  # held back by the back-off, and still the true reason
    await driver.close()


async def test_missing_policies_are_named_in_one_sentence(sim: RouterOSSim) -> None:
    sim.set_group_policy("agent-ro", "api,read")
    sim.add_user("watcher", "pw", "agent-ro")
    driver = make_driver(sim, username="watcher", password="pw")
    with pytest.raises(NeedsHumanError) as err:
        await driver.open()
    message = str(err.value)
    assert "lacks the write and test policies" in message
    assert "policy=api,read,write,test" in message and message.count(". ") == 0
    await driver.close()


async def test_least_privilege_group_is_enough(sim: RouterOSSim,
                                               caplog: pytest.LogCaptureFixture) -> None:
    sim.set_group_policy("cpe-agent", "api,read,write,test")
    sim.add_user("cpe", "pw", "cpe-agent")
    driver = make_driver(sim, username="cpe", password="pw")
    with caplog.at_level(logging.WARNING):
        await driver.open()
        await driver.apply_policy(POLICY)
        await driver.set_voip_path(VoipPath.CELLULAR)
        assert (await driver.ping(SBC, VoipPath.CELLULAR, 1, interval_s=0.05))[0].answered
        assert await driver.remove_all() > 0
    assert "more rights than the agent needs" not in caplog.text
    await driver.close()


async def test_read_state_names_the_matched_profile(sim: RouterOSSim,
                                                   driver: RouterOSDriver) -> None:
    state = await driver.read_state()
    line = "7" if sim.profile.v7 else "6.49"
    assert state.profile_matched is True
    assert state.profile == (f"RB2011UiAS on routeros {sim.profile.firmware} (line {line}): "
                             f"rb2011.toml, os-{line}.toml")


async def test_an_unknown_board_reads_profile_not_matched(sim: RouterOSSim,
                                                         tmp_path: Path) -> None:
    # Profiles that know the OS lines but no model: this RB2011 is an unknown board.
    shipped = Path(profiles.DEFAULT_DIR, "router", "routeros")
    (tmp_path / "router" / "routeros").mkdir(parents=True)
    for os_file in shipped.glob("os-*.toml"):
        shutil.copy(os_file, tmp_path / "router" / "routeros" / os_file.name)
    driver = make_driver(sim, profiles_dir=tmp_path)
    await driver.open()
    try:
        await driver.apply_policy(POLICY)  # the OS line's defaults are enough to work
        state = await driver.read_state()
        assert state.profile_matched is False and state.drift == ()
        assert state.profile is not None
        assert state.profile.startswith("unknown model 'RB2011UiAS' on routeros ")
    finally:
        await driver.close()


async def test_unsupported_firmware_is_refused(sim: RouterOSSim, tmp_path: Path) -> None:
    # Profiles that know only a 7.99 line: this router's version is not covered.
    (tmp_path / "router" / "routeros").mkdir(parents=True)
    (tmp_path / "router" / "routeros" / "os.toml").write_text(
        'kind = "os"\nos = "routeros"\nline = "7.99"\nmin_version = "7.99"\n'
        'routing = "routing-table"\nchecked_against = "nothing"\n')
    driver = make_driver(sim, profiles_dir=tmp_path)
    with pytest.raises(UnsupportedError, match="not supported"):
        await driver.open()
    await driver.close()


# --- what gets installed, and where ----------------------------------------------------------


async def test_guard_sits_before_fasttrack_and_masquerade_tops_srcnat(
        sim: RouterOSSim, driver: RouterOSDriver) -> None:
    await driver.apply_policy(POLICY)
    order = rule_order(sim)
    fasttrack = order.index("defconf: fasttrack")
    assert order.index(f"{c.TAG}lte-replies") < fasttrack
    assert order.index(f"{c.TAG}guard") < fasttrack
    guard = [x for x in order if x.startswith(f"{c.TAG}allow-") or x.endswith("drop-non-voip")]
    assert guard[-1] == f"{c.TAG}drop-non-voip"  # the chain ends by dropping
    assert rule_order(sim, "/ip/firewall/nat")[0] == f"{c.TAG}masquerade"
    mangle = {i["comment"]: i for i in sim.items("/ip/firewall/mangle")}
    switch = mangle[f"{c.TAG}switch"]
    assert (switch["action"], switch["jump-target"], switch["disabled"]) == (
        "jump", c.MARK_CHAIN, "true")
    route = next(i for i in sim.items("/ip/route") if i.get("comment") == f"{c.TAG}route")
    key = "routing-table" if sim.profile.v7 else "routing-mark"
    assert (route[key], route["gateway"]) == (c.TABLE, "192.168.5.1")
    if sim.profile.v7:
        table = next(i for i in sim.items("/routing/table") if i["name"] == c.TABLE)
        assert table["fib"] == "true"
    sip = next(i for i in sim.items("/ip/firewall/service-port") if i["name"] == "sip")
    assert sip["disabled"] == "true"


async def test_a_fasttrack_rule_moved_above_the_guard_is_drift_and_repaired(
        sim: RouterOSSim, driver: RouterOSDriver) -> None:
    await driver.apply_policy(POLICY)
    ids = {i.get("comment"): i[".id"] for i in sim.items("/ip/firewall/filter")}
    sim.db.move("/ip/firewall/filter", {"numbers": ids["defconf: fasttrack"],
                                        "destination": ids[f"{c.TAG}lte-replies"]})
    drift = (await driver.read_state()).drift
    assert any("sits after the fasttrack rule" in d for d in drift)
    customer = untagged(sim.snapshot())
    await driver.apply_policy(POLICY)
    order = rule_order(sim)
    assert order.index(f"{c.TAG}guard") < order.index("defconf: fasttrack")
    assert (await driver.read_state()).drift == ()
    assert untagged(sim.snapshot()) == customer  # moving ours moved none of theirs


async def test_the_guard_chain_keeps_its_drop_last(sim: RouterOSSim,
                                                    driver: RouterOSDriver) -> None:
    await driver.apply_policy(POLICY)
    ids = {i.get("comment"): i[".id"] for i in sim.items("/ip/firewall/filter")}
    sim.db.move("/ip/firewall/filter", {"numbers": ids[f"{c.TAG}{c.DROP_ROLE}"],
                                        "destination": ids[f"{c.TAG}allow-sip-udp"]})
    assert (await driver.read_state()).drift == (
        f"the rules of chain {c.GUARD_CHAIN} are out of order",)
    await driver.apply_policy(POLICY)
    chain = [i["comment"] for i in sim.items("/ip/firewall/filter")
             if i.get("chain") == c.GUARD_CHAIN]
    assert chain[-1] == f"{c.TAG}{c.DROP_ROLE}" and chain[0] == f"{c.TAG}allow-sip-udp"
    assert (await driver.read_state()).drift == ()


async def test_a_hand_added_matcher_is_replaced_in_place(sim: RouterOSSim,
                                                         driver: RouterOSDriver) -> None:
    await driver.apply_policy(POLICY)
    guard = next(i for i in sim.items("/ip/firewall/filter")
                 if i.get("comment") == f"{c.TAG}guard")
    sim.db.set("/ip/firewall/filter", {".id": guard[".id"], "src-address": "192.168.88.99"})
    drift = (await driver.read_state()).drift
    assert drift == (f"the filter rule {c.TAG}guard has src-address=192.168.88.99 added by hand",)
    before = rule_order(sim)
    await driver.apply_policy(POLICY)
    assert rule_order(sim) == before  # same place
    assert "src-address" not in next(i for i in sim.items("/ip/firewall/filter")
                                      if i.get("comment") == f"{c.TAG}guard")


async def test_foreign_rules_in_the_agents_chain_are_reported_not_touched(
        sim: RouterOSSim, driver: RouterOSDriver) -> None:
    await driver.apply_policy(POLICY)
    foreign = sim.add_item("/ip/firewall/filter", chain=c.GUARD_CHAIN, action="accept",
                           place_before=next(i[".id"] for i in sim.items("/ip/firewall/filter")
                                             if i.get("comment") == f"{c.TAG}allow-sip-udp"))
    state = await driver.read_state()
    assert any(foreign in n and "did not add" in n for n in state.notices)
    await driver.apply_policy(POLICY)
    assert foreign in [i[".id"] for i in sim.items("/ip/firewall/filter")]
    assert not (await driver.read_state()).notices  # said once


async def test_stale_items_of_an_older_policy_are_removed(sim: RouterOSSim,
                                                          driver: RouterOSDriver) -> None:
    await driver.apply_policy(POLICY)
    smaller = routeros_policy()
    smaller = type(smaller)(**{**smaller.__dict__, "agent_prefixes": (),
                               "cellular_probe_port": None, "match_dscp_ef": False})
    await driver.apply_policy(smaller)
    comments = {i.get("comment") for items in sim.snapshot().values() for i in items}
    assert f"{c.TAG}allow-agent" not in comments and f"{c.TAG}allow-probe" not in comments
    assert (await driver.read_state()).drift == ()


# --- cost -------------------------------------------------------------------------------


async def test_round_trips_apply_reapply_and_switch(sim: RouterOSSim,
                                                    driver: RouterOSDriver) -> None:
    mark = len(sim.command_log)
    await driver.apply_policy(POLICY)
    full = commands_since(sim, mark)
    assert len(written(sim, mark)) == len(c.build(POLICY, c.V7 if sim.profile.v7 else c.V6)) + 1
    mark = len(sim.command_log)
    await driver.apply_policy(POLICY)
    assert written(sim, mark) == []  # nothing to change: reads only
    assert len(commands_since(sim, mark)) < len(full)
    mark = len(sim.command_log)
    await driver.set_voip_path(VoipPath.CELLULAR)
    assert commands_since(sim, mark) == ["/ip/firewall/mangle/set", "/ip/firewall/mangle/print"]


# --- tamper -----------------------------------------------------------------------------


async def test_sip_helper_is_disabled_with_a_notice_and_watched(
        sim: RouterOSSim, driver: RouterOSDriver) -> None:
    assert (await driver.read_state()).sip_helper_on is True  # the factory default, seen
    await driver.apply_policy(POLICY)
    state = await driver.read_state()
    assert any("disabled the router's SIP helper" in n for n in state.notices)
    assert state.sip_helper_on is False
    sip = next(i for i in sim.items("/ip/firewall/service-port") if i["name"] == "sip")
    sim.db.set("/ip/firewall/service-port", {".id": sip[".id"], "disabled": "false"})
    state = await driver.read_state()
    assert state.sip_helper_on is True
    assert any("SIP helper" in d for d in state.drift)
    await driver.apply_policy(POLICY)
    state = await driver.read_state()
    assert any("SIP helper" in n for n in state.notices)
    assert state.sip_helper_on is False and state.drift == ()


async def test_a_build_without_the_sip_service_port_reads_unknown(
        sim: RouterOSSim, driver: RouterOSDriver) -> None:
    with sim.db.lock:  # as on builds that list no `sip` service port
        ports = sim.db.items["/ip/firewall/service-port"]
        ports[:] = [i for i in ports if i.props.get("name") != "sip"]
    await driver.apply_policy(POLICY)
    state = await driver.read_state()
    assert state.sip_helper_on is None  # cannot tell, not "off"
    assert state.drift == () and not any("SIP helper" in n for n in state.notices)


async def test_identity_rename_and_router_swap_are_reported(
        sim: RouterOSSim, driver: RouterOSDriver) -> None:
    first = await driver.read_state()
    assert first.identity is not None and first.identity.serial == "HD9080A1B2C"
    sim.db.set("/system/identity", {"name": "office"})
    state = await driver.read_state()
    assert any("identity changed from 'MikroTik' to 'office'" in n for n in state.notices)
    with sim.db.lock:  # another router answers at the same address
        sim.db.items["/system/routerboard"][0].props["serial-number"] = "HE1234567"
    sim.drop_connections()
    await eventually(lambda: sim.client_count == 0, 2.0)
    state = await driver.read_state()
    assert any("serial number changed from HD9080A1B2C to HE1234567" in n for n in state.notices)
    assert state.identity is not None and state.identity.serial == "HE1234567"


# --- links and probes --------------------------------------------------------------------


async def test_watch_carrier_reconnects_and_reports_what_it_missed(
        sim: RouterOSSim, driver: RouterOSDriver) -> None:
    events: asyncio.Queue[LinkEvent] = asyncio.Queue()

    async def consume() -> None:
        async for event in driver.watch_carrier():
            await events.put(event)

    task = asyncio.create_task(consume())
    try:
        for wait_s in (0.05, 0.2, 0.5, 1.0):  # live once a change shows
            sim.set_running("ether10", False)
            try:
                if await asyncio.wait_for(events.get(), wait_s) == LinkEvent("ether10", False):
                    break
            except TimeoutError:
                pass
            sim.set_running("ether10", True)
        else:
            raise AssertionError("the watch never reported ether10")
        sim.drop_connections()
        await eventually(lambda: sim.listeners == 0, 2.0)
        sim.set_running("ether10", True)  # while nobody listens
        assert await asyncio.wait_for(events.get(), 3.0) == LinkEvent("ether10", True)
    finally:
        task.cancel()
        # Bounded: a watch that cannot be cancelled fails here, it does not hang the run.
        await asyncio.wait_for(asyncio.gather(task, return_exceptions=True), 10)
    await eventually(lambda: sim.listeners == 0, 2.0)  # the watch session is closed


async def test_router_ping_by_routing_table(sim: RouterOSSim, driver: RouterOSDriver) -> None:
    await driver.apply_policy(POLICY)
    sim.set_ping(SBC, None, routing_table="main")  # the primary is dead
    sim.set_ping(SBC, 23.5, routing_table=c.TABLE)
    cellular = await driver.ping(SBC, VoipPath.CELLULAR, 3, interval_s=0.05)
    primary = await driver.ping(SBC, VoipPath.PRIMARY, 2, interval_s=0.05)
    assert [r.answered for r in cellular] == [True, True, True]
    expected = 0.0235 if sim.profile.v7 else 0.024  # v6 prints whole milliseconds
    assert cellular[0].rtt_s == pytest.approx(expected)
    assert [(r.answered, r.detail) for r in primary] == [(False, "timeout")] * 2
    pings = [e for e in sim.command_log if e["command"] == "/ping"]
    assert pings == []  # /ping is not a menu command: the sim does not log it


async def test_ping_never_waits_behind_the_control_session(
        sim: RouterOSSim, driver: RouterOSDriver) -> None:
    await driver.apply_policy(POLICY)
    ping = asyncio.create_task(driver.ping(SBC, VoipPath.CELLULAR, 20, interval_s=0.5))
    await asyncio.sleep(0)
    await asyncio.wait_for(driver.set_voip_path(VoipPath.CELLULAR), 1.0)  # a failover now
    ping.cancel()
    await asyncio.gather(ping, return_exceptions=True)


async def test_lte1_without_gateway_on_a_chateau() -> None:
    with RouterOSSim(profile="7.18", model="Chateau-LTE", user=USER, password=PASSWORD) as sim:
        driver = make_driver(sim)
        await driver.open()
        assert driver.profile is not None and driver.profile.model is not None
        assert driver.profile.model.lte_interface == "lte1"
        policy = routeros_policy(cellular="lte1", gateway=None)
        await driver.apply_policy(policy)
        route = next(i for i in sim.items("/ip/route") if i.get("comment") == f"{c.TAG}route")
        assert route["gateway"] == "lte1"
        counters = await driver.interface_counters("lte1")
        assert counters.counts_frames is False  # the built-in modem carries IP
        assert (await driver.read_state()).drift == ()
        await driver.close()
