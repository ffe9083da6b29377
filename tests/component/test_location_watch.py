"""The location guard in its I/O shell, against the AT modem simulator on a pty.

A baseline is recorded from the simulated modem and saved in a real Store; then the
ModemWatch feeds each report to the LocationWatch. A neighbour cell for one poll raises
nothing; a new TAC/eNB that persists raises `relocated` once (and `returned` when the
modem is back on the site's cells), also across a restart; a foreign MCC raises the
country reason; a far GNSS fix the gnss reason.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.clock import ManualClock
from agent.config import LocationSection
from agent.location import LocationPolicy
from agent.modem.location_watch import (
    LocationWatch,
    load_baseline,
    policy_of,
    record_baseline,
    sample_from_figures,
    save_baseline,
)
from agent.modem.watch import ModemWatch
from agent.store import Store
from drivers.errors import DriverError
from drivers.modem.at.driver import AtModemDriver
from hil.sims.at_modem import AtModemSim

pytestmark = pytest.mark.timeout(60)

POLICY = LocationPolicy(min_samples=3, min_duration_s=60.0, country_min_samples=2,
                        country_min_duration_s=30.0, gnss_radius_m=1000.0)
HOME_CELL = 0x0A1B2C03  # the simulator's default: eNB 0x0A1B2C, TAC 0x2B10
SECTOR_2 = 0x0A1B2C02  # the same eNB's other sector
NEIGHBOUR = 0x0A1B2D01  # an eNB seen at the site during the installation
FAR_CELL = 0x0C0D0E01  # an eNB (and TAC) never seen there


@pytest.fixture
def sim() -> Iterator[AtModemSim]:
    with AtModemSim("quectel-ec25", boot_s=0.2) as s:
        yield s


@pytest.fixture
async def driver(sim: AtModemSim) -> AsyncIterator[AtModemDriver]:
    d = AtModemDriver(sim.path, timeout_s=0.5)
    await d.open()
    try:
        yield d
    finally:
        await d.close()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "agent.db")
    yield s
    s.close()


async def install(driver: AtModemDriver, sim: AtModemSim, store: Store,
                  clock: ManualClock) -> None:
    baseline = await record_baseline(driver, clock, samples=2, interval_s=0)
    sim.set_cell(cell_id=NEIGHBOUR)
    baseline = await record_baseline(driver, clock, samples=1, interval_s=0, baseline=baseline)
    sim.set_cell(cell_id=HOME_CELL)
    save_baseline(store, baseline)


class Rig:
    def __init__(self, driver: AtModemDriver, store: Store, clock: ManualClock) -> None:
        self.clock = clock
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.guard = LocationWatch(store, clock, emit=lambda k, d: self.events.append((k, d)),
                                   policy=POLICY, driver=driver)
        self.watch = ModemWatch(driver, clock, lambda: False, on_report=self.guard.on_report)

    async def polls(self, n: int, every_s: float = 30.0) -> None:
        for _ in range(n):
            await self.watch.poll_once()
            self.clock.advance(every_s)

    def kinds(self) -> list[tuple[str, str]]:
        return [(k, d["reason"]) for k, d in self.events]


async def test_baseline_from_the_modem(driver: AtModemDriver, sim: AtModemSim,
                                       store: Store) -> None:
    clock = ManualClock()
    await install(driver, sim, store, clock)
    b = load_baseline(store)
    assert b is not None and b.samples == 3
    assert (b.plmns, b.tacs, b.enb_ids) == (
        frozenset({"310260"}), frozenset({0x2B10}), frozenset({0x0A1B2C, 0x0A1B2D}))
    sim.set_registration(2)  # searching: nothing to record
    with pytest.raises(DriverError, match="no network"):
        await record_baseline(driver, clock, samples=2, interval_s=0)


async def test_neighbour_blip_raises_nothing(driver: AtModemDriver, sim: AtModemSim,
                                             store: Store) -> None:
    clock = ManualClock()
    await install(driver, sim, store, clock)
    rig = Rig(driver, store, clock)
    await rig.polls(3)
    sim.set_cell(cell_id=SECTOR_2)  # another sector of the home eNB
    await rig.polls(3)
    sim.set_cell(cell_id=FAR_CELL, tac=0x3C21)  # a new cell for one poll (a blip) ...
    await rig.polls(1)
    sim.set_cell(cell_id=NEIGHBOUR, tac=0x2B10)  # ... then a known one resets the count
    await rig.polls(2)
    sim.set_cell(cell_id=FAR_CELL, tac=0x3C21)  # two new ones: not yet persistent
    await rig.polls(2)
    sim.set_cell(cell_id=HOME_CELL, tac=0x2B10)
    await rig.polls(5)
    assert rig.events == []
    assert rig.guard.status()["verdict"] == "at_site"


async def test_persistent_new_tac_is_relocated_once(driver: AtModemDriver, sim: AtModemSim,
                                                    store: Store) -> None:
    clock = ManualClock()
    await install(driver, sim, store, clock)
    rig = Rig(driver, store, clock)
    await rig.polls(2)
    sim.set_cell(cell_id=FAR_CELL, tac=0x3C21)
    await rig.polls(3)  # 3 samples, 60 s: exactly the policy
    assert rig.kinds() == [("relocated", "cell")]
    _kind, data = rig.events[0]
    assert (data["tac"], data["enb_id"], data["new_tac"], data["samples"]) == (
        0x3C21, 0x0C0D0E, True, 3)
    await rig.polls(10)
    assert rig.kinds() == [("relocated", "cell")]  # once per change
    assert rig.guard.status()["verdict"] == "relocated"

    # A restart remembers it: no second event from a fresh shell on the same store.
    rig2 = Rig(driver, store, clock)
    await rig2.polls(5)
    assert rig2.events == []

    sim.set_cell(cell_id=HOME_CELL, tac=0x2B10)
    await rig2.polls(1)
    assert rig2.kinds() == [("returned", "cell")]


async def test_foreign_country(driver: AtModemDriver, sim: AtModemSim, store: Store) -> None:
    clock = ManualClock()
    await install(driver, sim, store, clock)
    rig = Rig(driver, store, clock)
    sim.set_cell(mcc="234", mnc="15", operator="Vodafone UK")
    await rig.polls(1)
    assert rig.events == []
    await rig.polls(1)  # 2 samples, 30 s
    assert rig.kinds() == [("relocated", "country")]
    assert rig.events[0][1]["mcc"] == "234"
    sim.set_cell(mcc="310", mnc="260", operator="T-Mobile")
    await rig.polls(1)
    assert rig.kinds() == [("relocated", "country"), ("returned", "country")]


async def test_country_without_a_baseline(driver: AtModemDriver, sim: AtModemSim,
                                          store: Store) -> None:
    clock = ManualClock()
    rig = Rig(driver, store, clock)
    sim.set_cell(mcc="334", mnc="020")  # Mexico
    await rig.polls(3)
    assert rig.kinds() == [("relocated", "country")]
    assert rig.guard.status()["baseline"] is None


async def test_gnss_beyond_the_radius(driver: AtModemDriver, sim: AtModemSim,
                                      store: Store) -> None:
    clock = ManualClock()
    sim.set_gnss(40.7128, -74.0060)
    await install(driver, sim, store, clock)
    baseline = load_baseline(store)
    assert baseline is not None and baseline.gnss is not None
    rig = Rig(driver, store, clock)
    sim.set_gnss(40.7306, -73.9352)  # about 6 km away
    for _ in range(3):
        assert await rig.guard.gnss_once() is not None
        clock.advance(30)
    assert rig.kinds() == [("relocated", "gnss")]
    assert rig.events[0][1]["distance_m"] > 5000


def test_status_figures_and_config() -> None:
    s = sample_from_figures({"mcc": "310", "mnc": "260", "tac": 11024, "enb_id": 5,
                             "cell_id": 1290}, 10.0)
    assert s is not None and (s.mcc, s.tac, s.enb_id) == ("310", 11024, 5)
    assert sample_from_figures({"mcc": None, "tac": None}, 10.0) is None
    policy = policy_of(LocationSection(allowed_mccs=["302"], min_samples=2))
    assert policy.allowed_mccs == frozenset({"302"}) and policy.min_samples == 2
