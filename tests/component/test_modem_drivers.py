"""Contract tests for every modem driver against its simulator, and hang-and-recover.

AT drivers run against hil/sims/at_modem.py on a real pty (all five profiles); the Netgear
driver against hil/sims/netgear_api.py (the model.json/Forms API); the RouterOS LTE
driver against a fake RouterOSCommandRunner (the real transport is another module's).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from agent.clock import ManualClock
from agent.coverage import Grade
from agent.modem.recovery import RecoveryPolicy
from agent.modem.watch import ModemWatch
from drivers.errors import DeviceReplyError, NeedsHumanError, RetryableError
from drivers.modem.at.driver import AtModemDriver
from drivers.modem.base import ModemDriver
from drivers.modem.netgear import NetgearDriver
from drivers.modem.routeros_lte import RouterOSLteDriver
from drivers.types import AccessTech, ModemEventKind, Registration, SimState
from hil.sims.at_modem import PROFILES, AtModemSim
from hil.sims.netgear_api import NetgearServer

pytestmark = pytest.mark.timeout(60)

NOW = 1_800_000_000.0


@pytest.fixture(params=sorted(PROFILES))
def sim(request: pytest.FixtureRequest) -> Iterator[AtModemSim]:
    with AtModemSim(request.param, boot_s=0.2) as s:
        s.set_network_time(NOW)
        yield s


def make_driver(sim: AtModemSim, **kw: Any) -> AtModemDriver:
    return AtModemDriver(sim.path, timeout_s=0.5, reset_settle_s=0.3, boot_timeout_s=5.0,
                         reset_command_timeout_s=0.5, **kw)


@pytest.fixture
async def driver(sim: AtModemSim) -> AsyncIterator[AtModemDriver]:
    d = make_driver(sim)
    await d.open()
    try:
        yield d
    finally:
        await d.close()


# -- AT drivers: the same contract for every profile ---------------------------------------


async def test_identity_and_plugin(driver: AtModemDriver, sim: AtModemSim) -> None:
    assert isinstance(driver, ModemDriver)
    assert driver.name == f"at/{sim.profile.vendor}"
    ident = await driver.identity()
    assert (ident.model, ident.imei, ident.iccid) == (
        sim.profile.model, sim.profile.imei, "8901260123456789012")


async def test_report_is_normalised(driver: AtModemDriver, sim: AtModemSim) -> None:
    r = await driver.read_report()
    assert (r.registration, r.access_tech, r.mcc, r.mnc, r.operator) == (
        Registration.HOME, AccessTech.LTE, "310", "260", "T-Mobile")
    assert (r.rsrp_dbm, r.rsrq_db, r.rssi_dbm, r.sinr_db) == (-95, -10.0, -65, 13.0)
    assert (r.tac, r.cell_id, r.enb_id, r.band) == (0x2B10, 0x0A1B2C03, 0x0A1B2C, "B66")
    assert (r.sim_state, r.iccid, r.imei, r.radio_on) == (
        SimState.READY, "8901260123456789012", sim.profile.imei, True)


async def test_searching_gives_none_not_sentinels(driver: AtModemDriver, sim: AtModemSim) -> None:
    sim.set_registration(2)
    r = await driver.read_report()
    assert r.registration is Registration.SEARCHING
    assert (r.rsrp_dbm, r.rsrq_db, r.rssi_dbm, r.sinr_db, r.tac, r.cell_id, r.mcc) == (None,) * 7


async def test_sim_removed_and_radio_off(driver: AtModemDriver, sim: AtModemSim) -> None:
    sim.remove_sim()
    r = await driver.read_report()
    assert (r.sim_state, r.iccid, r.registration) == (
        SimState.ABSENT, None, Registration.NOT_REGISTERED)
    sim.insert_sim()
    sim.set_radio(False)
    r = await driver.read_report()
    assert r.radio_on is False and r.iccid == "8901260123456789012"
    await driver.set_radio(True)
    assert (await driver.read_report()).registration is Registration.HOME


async def next_registration(events: Any, wanted: Registration) -> Any:
    while True:
        e = await asyncio.wait_for(anext(events), 2.0)
        if e.kind is ModemEventKind.REGISTRATION and e.registration is wanted:
            return e


async def test_registration_events(driver: AtModemDriver, sim: AtModemSim) -> None:
    events = driver.events()
    sim.set_registration(2)
    e = await next_registration(events, Registration.SEARCHING)
    assert e.raw.endswith(": 2")
    sim.set_registration(1)
    e = await next_registration(events, Registration.HOME)
    assert (e.tac, e.cell_id) == (0x2B10, 0x0A1B2C03)


async def test_network_time(driver: AtModemDriver, sim: AtModemSim) -> None:
    t = await driver.network_time()
    assert t is not None and abs(t.utc_s - NOW) < 5 and t.tz_offset_s == -18000
    assert t.source == ("nitz" if sim.profile.vendor == "quectel" else "cclk")


async def test_reset_comes_back_set_up(driver: AtModemDriver, sim: AtModemSim) -> None:
    await driver.reset()
    assert sim.restarts == 1
    assert sim.session.echo is False and sim.session.reg_n["+CEREG"] == 2
    assert (await driver.read_report()).rsrp_dbm == -95


async def test_urc_inside_a_report_changes_nothing(driver: AtModemDriver, sim: AtModemSim) -> None:
    sim.inject_urc("+CEREG: 1", 'RING', where="mid")
    sim.inject_urc("+CPIN: READY", where="after")
    assert (await driver.read_report()).rsrp_dbm == -95


# -- vendor specifics ----------------------------------------------------------------------


@pytest.fixture
def quectel5g() -> Iterator[AtModemSim]:
    with AtModemSim("quectel-rm500q", boot_s=0.2) as s:
        yield s


async def test_quectel_nsa_and_sa(quectel5g: AtModemSim) -> None:
    d = make_driver(quectel5g)
    await d.open()
    try:
        quectel5g.set_cell(mode="NR5G-NSA")
        r = await d.read_report()
        assert r.access_tech is AccessTech.NR5G_NSA and r.rsrp_dbm == -95
        assert (r.nr_rsrp_dbm, r.nr_sinr_db, r.nr_band) == (-90, 15.0, "n71")
        quectel5g.set_cell(mode="NR5G-SA")
        r = await d.read_report()
        assert (r.access_tech, r.rsrp_dbm, r.band, r.enb_id) == (
            AccessTech.NR5G_SA, -90, "n71", None)
    finally:
        await d.close()


async def test_quectel_gnss(quectel5g: AtModemSim) -> None:
    d = make_driver(quectel5g)
    await d.open()
    try:
        assert await d.gnss_fix() is None  # engine off: the driver starts it
        assert quectel5g.session.gnss_on
        assert await d.gnss_fix() is None  # no fix yet
        quectel5g.set_gnss(41.8781, -87.6298)
        fix = await d.gnss_fix()
        assert fix is not None and (fix.lat_deg, fix.lon_deg) == (41.8781, -87.6298)
    finally:
        await d.close()


async def test_quectel_sim_removal_event() -> None:
    with AtModemSim("quectel-ec25") as s:
        d = make_driver(s)
        await d.open()
        try:
            events = d.events()
            s.remove_sim()
            kinds = set()
            for _ in range(5):
                e = await asyncio.wait_for(anext(events), 2.0)
                kinds.add(e.kind)
                if e.kind is ModemEventKind.SIM:
                    assert e.sim_state is SimState.NOT_READY
                    break
            assert ModemEventKind.SIM in kinds
        finally:
            await d.close()


async def test_garbled_report_is_a_clear_error_with_raw() -> None:
    with AtModemSim("quectel-ec25") as s:
        d = make_driver(s)
        await d.open()
        try:
            s.script_reply("AT+CSQ", ["+CSQ: 2#,9"])
            with pytest.raises(DeviceReplyError) as exc:
                await d.read_report()
            assert exc.value.raw == "+CSQ: 2#,9"
            truncated = '+QENG: "servingcell","NOCONN","LTE","FDD",31'
            s.script_reply('AT+QENG="servingcell"', [truncated])
            with pytest.raises(DeviceReplyError) as exc:
                await d.read_report()
            assert "truncated" not in str(exc.value) and "+QENG:" in str(exc.value)
            assert (await d.read_report()).rsrp_dbm == -95  # and the next one is fine
        finally:
            await d.close()


# -- hang and recover, through the agent's watch -------------------------------------------


async def test_hang_is_recovered_by_a_power_cycle_and_reports_again() -> None:
    with AtModemSim("quectel-ec25", boot_s=0.2) as s:
        async def power_cycle() -> None:
            s.restart()

        d = make_driver(s, power_cycle=power_cycle)
        clock = ManualClock()
        events: list[tuple[str, dict[str, Any]]] = []
        watch = ModemWatch(d, clock, lambda: False, emit=lambda k, v: events.append((k, v)),
                           policy=RecoveryPolicy(fail_threshold=3, backoff_initial_s=60))
        await watch.poll_once()
        assert watch.coverage is not None and watch.coverage.grade is Grade.FAIR
        s.hang()
        for _ in range(3):
            clock.advance(30)
            await watch.poll_once()
        assert [k for k, _ in events] == ["modem_unresponsive", "modem_reset"]
        assert s.restarts == 1
        clock.advance(30)
        await watch.poll_once()
        assert [k for k, _ in events][-1] == "modem_recovered"
        assert watch.latest is not None and watch.latest.rsrp_dbm == -95
        assert watch.status()["problem"] is None
        await d.close()


async def test_no_reset_while_calls_are_on_lte() -> None:
    with AtModemSim("telit-le910", boot_s=0.2) as s:
        d = make_driver(s)
        clock = ManualClock()
        events: list[str] = []
        watch = ModemWatch(d, clock, lambda: True, emit=lambda k, v: events.append(k))
        await watch.poll_once()
        s.hang()
        for _ in range(4):
            clock.advance(30)
            await watch.poll_once()
        assert events == ["modem_unresponsive", "modem_reset_deferred"] and s.restarts == 0
        await d.close()


# -- Netgear: hil/sims/netgear_api.py, speaking model.json and /Forms/config -------------


@pytest.fixture
def netgear() -> Iterator[NetgearServer]:
    server = NetgearServer()
    yield server
    server.close()


async def test_netgear_login_and_report(netgear: NetgearServer) -> None:
    d = NetgearDriver("127.0.0.1", "s3cret", port=netgear.port, timeout_s=2.0)
    assert isinstance(d, ModemDriver)
    await d.open()
    r = await d.read_report()
    assert (r.registration, r.rsrp_dbm, r.band, r.mcc, r.mnc, r.sim_state, r.iccid) == (
        Registration.HOME, -98, "B2", "310", "410", SimState.READY, "89014103211118510720")
    ident = await d.identity()
    assert (ident.model, ident.imei) == ("LM1200", "359000000000001")


async def test_netgear_wrong_password(netgear: NetgearServer) -> None:
    d = NetgearDriver("127.0.0.1", "nope", port=netgear.port, timeout_s=2.0)
    with pytest.raises(NeedsHumanError) as exc:
        await d.open()
    assert "refused the admin password" in str(exc.value)


async def test_netgear_logs_in_again_after_its_session_is_lost(netgear: NetgearServer) -> None:
    d = NetgearDriver("127.0.0.1", "s3cret", port=netgear.port, timeout_s=2.0)
    await d.open()
    netgear.sessions.clear()  # the modem restarted on its own
    assert (await d.read_report()).iccid == "89014103211118510720"


async def test_netgear_garbled_and_unreachable(netgear: NetgearServer) -> None:
    d = NetgearDriver("127.0.0.1", "s3cret", port=netgear.port, timeout_s=2.0)
    await d.open()
    netgear.garble = True
    with pytest.raises(DeviceReplyError) as exc:
        await d.read_report()
    assert exc.value.raw == "{garbled"
    gone = NetgearDriver("127.0.0.1", "s3cret", port=1, timeout_s=0.5)
    with pytest.raises(RetryableError):
        await gone.ping()


async def test_netgear_reset(netgear: NetgearServer) -> None:
    d = NetgearDriver("127.0.0.1", "s3cret", port=netgear.port, timeout_s=2.0,
                      boot_timeout_s=5.0, poll_s=0.05)
    await d.open()
    await d.reset()
    assert netgear.rebooted == 1 and len(netgear.sessions) == 1


# -- RouterOS built-in LTE over a fake runner ----------------------------------------------


class FakeRunner:
    def __init__(self, version: int = 7) -> None:
        self.version = version
        self.calls: list[tuple[str, dict[str, str]]] = []
        self.at: dict[str, str] = {
            "AT+COPS?": '+COPS: 0,2,"310260",7\r\nOK',
            'AT+QENG="servingcell"': (
                '+QENG: "servingcell","NOCONN","LTE","FDD",310,260,2F5A0A,480,1300,3,5,5,'
                "2B10,-97,-9,-68,6,9,-32768,-\r\nOK"),
            "AT+QLTS=1": '+QLTS: "2027/01/15,08:00:00-20,0"\r\nOK',
            "AT+CFUN=1,1": "OK",
        }
        self.monitor = {
            "status": "connected", "manufacturer": "Quectel", "model": "EG18-EA",
            "revision": "EG18EAPAR01A12M4G", "current-operator": "T-Mobile",
            "current-cellid": "3103242", "enb-id": "12122", "phy-cellid": "480",
            "data-class": "LTE", "imei": "869816040981234", "iccid": "89371011221020571234",
            "primary-band": "B3@20Mhz earfcn: 1300 phy-cellid: 480",
            "rssi": "-68dBm", "rsrp": "-97dBm", "rsrq": "-9dB", "sinr": "6dB",
        }

    async def run(self, path: str, **args: str) -> list[dict[str, str]]:
        self.calls.append((path, args))
        if path == "/interface/lte/monitor":
            if self.version == 6:
                raise DeviceReplyError("no such command", raw="!trap =message=no such command")
            return [dict(self.monitor)]
        if path == "/interface/lte/info":
            return [{"registration-status": "registered", "current-operator": "302720",
                     "lac": "12", "current-cellid": "5456546", "rsrp": "-106dBm",
                     "earfcn": "6400 (band 20, bandwidth 10Mhz)", "pin-status": "ok",
                     "functionality": "full", "access-technology": "Evolved 3G (LTE)"}]
        if path == "/interface/lte/at-chat":
            reply = self.at.get(args["input"])
            if reply is None:
                return [{"output": "ERROR"}]
            return [{"output": reply}]
        if path == "/system/routerboard/usb/power-reset":
            return []
        raise AssertionError(path)


async def test_routeros_v7_monitor_plus_at_chat() -> None:
    runner = FakeRunner(7)
    d = RouterOSLteDriver(runner)
    assert isinstance(d, ModemDriver)
    await d.open()
    r = await d.read_report()
    assert (r.registration, r.band, r.rsrp_dbm, r.enb_id, r.operator) == (
        Registration.HOME, "B3", -97, 12122, "T-Mobile")
    assert (r.mcc, r.mnc, r.tac) == ("310", "260", 0x2B10)  # from the modem, read-only
    sent = [a["input"] for p, a in runner.calls if p.endswith("at-chat")]
    assert sent == ['AT+QENG="servingcell"']
    t = await d.network_time()
    assert t is not None and t.source == "nitz"
    assert (await d.identity()).model == "EG18-EA"


async def test_routeros_v6_info_fallback() -> None:
    runner = FakeRunner(6)
    d = RouterOSLteDriver(runner, use_at=False)
    r = await d.read_report()
    assert (r.mcc, r.mnc, r.tac, r.band, r.rsrp_dbm) == ("302", "720", 12, "B20", -106)
    await d.read_report()
    paths = [p for p, _ in runner.calls]
    assert paths == ["/interface/lte/monitor", "/interface/lte/info", "/interface/lte/info"]


async def test_routeros_reset_falls_back_to_usb_power_reset() -> None:
    runner = FakeRunner(7)
    del runner.at["AT+CFUN=1,1"]
    d = RouterOSLteDriver(runner, boot_timeout_s=2.0, poll_s=0.01)
    await d.reset()
    assert ("/system/routerboard/usb/power-reset", {"duration": "5s"}) in runner.calls
