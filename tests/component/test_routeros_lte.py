"""The routeros-lte modem driver over the real RouterOS transport, against the simulator's
built-in LTE (Chateau-LTE model): v7 monitor, v6 info, at-chat, and the registry."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from drivers import registry
from drivers.errors import DeviceReplyError, NeedsHumanError
from drivers.modem.base import ModemDriver
from drivers.modem.routeros_lte import RouterOSLteDriver
from drivers.types import Registration
from hil.sims.routeros import RouterOSSim
from tests.contract.harness import PASSWORD, USER

pytestmark = pytest.mark.timeout(60)

NOW = 1_800_000_000.0


@pytest.fixture(params=["6.49", "7.18"])
def sim(request: pytest.FixtureRequest) -> Iterator[RouterOSSim]:
    with RouterOSSim(profile=request.param, model="Chateau-LTE", user=USER,
                     password=PASSWORD) as s:
        yield s


@pytest.fixture
async def driver(sim: RouterOSSim) -> AsyncIterator[RouterOSLteDriver]:
    host, port = sim.address
    cls = registry.load_modem_driver("routeros-lte")
    d = cls.from_options(host=host, port=port, username=USER, password=PASSWORD,
                         plain_api=True, timeout_s=2.0, interface="lte1")
    assert isinstance(d, RouterOSLteDriver) and isinstance(d, ModemDriver)
    await d.open()
    try:
        yield d
    finally:
        await d.close()


async def test_report_through_the_transport(driver: RouterOSLteDriver, sim: RouterOSSim) -> None:
    r = await driver.read_report()
    assert (r.registration, r.mcc, r.mnc, r.tac, r.cell_id, r.enb_id) == (
        Registration.HOME, "310", "260", 0x2B10, 0x0A1B2C03, 0x0A1B2C)
    assert (r.rsrp_dbm, r.band) == (-97, "B3")
    used = {e["command"] for e in sim.command_log}
    assert ("/interface/lte/monitor" if sim.profile.v7 else "/interface/lte/info") in used
    ident = await driver.identity()
    assert (ident.model, ident.imei) == ("EG12-EA", "869816040981234")


async def test_a_new_cell_and_network_time(driver: RouterOSLteDriver, sim: RouterOSSim) -> None:
    sim.set_lte(tac=0x3C21, cell_id=0x0B0C0D01, network_utc_s=NOW)
    r = await driver.read_report()
    assert (r.tac, r.enb_id) == (0x3C21, 0x0B0C0D)
    t = await driver.network_time()
    assert t is not None and t.utc_s == NOW and t.source == "nitz"


async def test_at_chat_error_and_disabled_interface(driver: RouterOSLteDriver,
                                                    sim: RouterOSSim) -> None:
    from drivers.modem.at.protocol import AtError

    with pytest.raises(AtError):
        await driver.at.command("AT+QNOSUCH")
    sim.set_lte(registered=False)
    assert (await driver.read_report()).registration is Registration.SEARCHING
    await driver.set_radio(False)
    assert sim.items("/interface/lte")[0]["disabled"] == "true"
    with pytest.raises(DeviceReplyError, match="disabled"):
        await driver.read_report()


def test_from_options_needs_a_host() -> None:
    with pytest.raises(NeedsHumanError):
        RouterOSLteDriver.from_options(host=None, username=USER, password=PASSWORD)
