"""Network time from the simulated modem when NTP is not there: TimeWatch over a pty."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator

import pytest

from agent.clock import ManualClock
from agent.modem.time_watch import TimeWatch
from agent.timesource import NetworkTimeSource, TimeQuality, Verdict
from drivers.modem.at.driver import AtModemDriver
from hil.sims.at_modem import AtModemSim

pytestmark = pytest.mark.timeout(60)

NOW = 1_800_000_000.0
BOOTED_IN_1970 = 1_000.0


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


class Box:
    """The kernel clock as the source sees it: NTP state and the steps taken."""

    def __init__(self) -> None:
        self.ntp = False
        self.steps: list[float] = []


def make(driver: AtModemDriver, clock: ManualClock, box: Box) -> TimeWatch:
    source = NetworkTimeSource(clock, lambda: box.ntp, set_system_clock=box.steps.append)
    return TimeWatch(driver, source, clock, every_s=3600.0, retry_s=60.0)


async def until(cond: Callable[[], bool], timeout_s: float = 5.0) -> None:
    async def wait() -> None:
        while not cond():
            await asyncio.sleep(0.01)

    await asyncio.wait_for(wait(), timeout_s)


async def test_steps_the_clock_after_a_power_cut(driver: AtModemDriver, sim: AtModemSim) -> None:
    clock, box = ManualClock(wall_s=BOOTED_IN_1970), Box()
    sim.set_network_time(NOW)
    watch = make(driver, clock, box)
    j = await watch.sync_once()
    assert j is not None and j.verdict is Verdict.STEP
    assert len(box.steps) == 1 and abs(box.steps[0] - NOW) < 5
    assert watch.source.quality() is TimeQuality.NETWORK
    clock.advance(100)
    assert abs(watch.source.wall() - (NOW + 100)) < 5
    assert watch.status()["source"] == "nitz"


async def test_ntp_synced_leaves_the_modem_alone(driver: AtModemDriver, sim: AtModemSim) -> None:
    clock, box = ManualClock(wall_s=BOOTED_IN_1970), Box()
    box.ntp = True
    sim.set_network_time(NOW)
    watch = make(driver, clock, box)
    before = len(sim.commands)
    assert await watch.sync_once() is None
    assert sim.commands[before:] == [] and box.steps == []
    assert watch.source.quality() is TimeQuality.NTP


async def test_retries_until_the_network_sets_the_time(driver: AtModemDriver,
                                                       sim: AtModemSim) -> None:
    clock, box = ManualClock(wall_s=BOOTED_IN_1970), Box()
    sim.set_network_time(None)  # not registered yet: the modem's clock is at its epoch
    watch = make(driver, clock, box)
    task = asyncio.create_task(watch.run())
    try:
        await until(lambda: watch.readings == 1)
        assert box.steps == [] and watch.source.quality() is TimeQuality.UNSYNCHRONISED
        sim.set_network_time(NOW)
        clock.advance(60)  # the retry, not the hour
        await until(lambda: watch.readings == 2)
        assert watch.last is not None and watch.last.verdict is Verdict.STEP
        assert len(box.steps) == 1
        clock.advance(3600)  # then hourly
        await until(lambda: watch.readings == 3)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
