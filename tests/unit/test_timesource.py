"""Network time as a time source when NTP is absent: judge (pure) and the source's estimate."""

from __future__ import annotations

import pytest

from agent.clock import ManualClock
from agent.timesource import MIN_PLAUSIBLE_UTC_S, NetworkTimeSource, TimeQuality, Verdict, judge
from drivers.types import ModemTime

NOW = 1_800_000_000.0


@pytest.mark.parametrize(
    ("modem_utc", "system", "ntp", "verdict"),
    [
        (NOW, NOW + 5, True, Verdict.IGNORE_NTP_OK),
        (NOW, 0.0, False, Verdict.STEP),  # booted in 1970
        (NOW, NOW - 30, False, Verdict.KEEP),
        (NOW, NOW - 3600, False, Verdict.STEP),
        (315_964_883.0, NOW, False, Verdict.IGNORE_IMPLAUSIBLE),  # modem clock never set (1980)
        (MIN_PLAUSIBLE_UTC_S - 1, 0.0, False, Verdict.IGNORE_IMPLAUSIBLE),
    ],
)
def test_judge(modem_utc, system, ntp, verdict):
    assert judge(ModemTime(modem_utc), system, ntp).verdict is verdict


def test_source_steps_once_and_estimates_from_monotonic():
    clock = ManualClock(monotonic_s=100.0, wall_s=0.0)
    stepped: list[float] = []
    src = NetworkTimeSource(clock, lambda: False, set_system_clock=stepped.append)
    assert src.quality() is TimeQuality.UNSYNCHRONISED
    j = src.offer(ModemTime(NOW, -18000, "nitz"))
    assert j is not None and j.verdict is Verdict.STEP and stepped == [NOW]
    clock.advance(60)
    assert src.wall() == NOW + 60 and src.quality() is TimeQuality.NETWORK
    assert src.offer(None) is None


def test_source_leaves_ntp_alone():
    clock = ManualClock(wall_s=NOW)
    stepped: list[float] = []
    src = NetworkTimeSource(clock, lambda: True, set_system_clock=stepped.append)
    assert src.offer(ModemTime(NOW + 900)).verdict is Verdict.IGNORE_NTP_OK
    assert stepped == [] and src.wall() == NOW and src.quality() is TimeQuality.NTP


def test_setting_the_clock_may_be_refused():
    def refuse(_: float) -> None:
        raise PermissionError("CAP_SYS_TIME")

    clock = ManualClock(monotonic_s=5.0, wall_s=0.0)
    src = NetworkTimeSource(clock, lambda: False, set_system_clock=refuse)
    assert src.offer(ModemTime(NOW)).verdict is Verdict.STEP
    assert src.wall() == NOW  # the estimate still works inside the agent
