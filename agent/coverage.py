"""Pure: how good is the LTE coverage for voice, in five words (excellent ... no service).

Thresholds are Teltonika Networks' "Mobile Signal Strength Recommendations" / "RSRP and
RSRQ" wiki tables (wiki.teltonika-networks.com), the usual industry rule of thumb:

| metric   | excellent | good       | fair (T: "fair to poor") | poor (T: "no signal") |
|----------|-----------|------------|--------------------------|-----------------------|
| RSRP dBm | >= -80    | -80 .. -90 | -90 .. -100              | < -100                |
| RSRQ dB  | >= -10    | -10 .. -15 | -15 .. -20               | < -20                 |
| SINR dB  | >= 20     | 13 .. 20   | 0 .. 13                  | < 0                   |
| RSSI dBm | >= -70    | -70 .. -85 | -85 .. -100              | < -100  (2G/3G only)  |

Two departures, both ours: Teltonika calls RSRP <= -100 dBm "no signal", but a call needs
only ~90 kbit/s and LTE still carries it there, so we call it "poor"; "no service" is
kept for what really means no service: not registered (home or roaming) or radio off. A
registered modem that gives no figure at all grades poor: nothing vouches for it. The grade
is the worst of the metrics the modem gave, so a strong but noisy cell (good RSRP, SINR
< 0) grades poor, as it sounds.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from drivers.types import SignalReport


class Grade(enum.StrEnum):
    EXCELLENT = "excellent"
    GOOD = "good"
    FAIR = "fair"
    POOR = "poor"
    NO_SERVICE = "no_service"


_ORDER = [Grade.EXCELLENT, Grade.GOOD, Grade.FAIR, Grade.POOR, Grade.NO_SERVICE]

#: Lower bounds (inclusive) of excellent, good, fair; below the last is poor.
THRESHOLDS: dict[str, tuple[float, float, float]] = {
    "rsrp_dbm": (-80.0, -90.0, -100.0),
    "rsrq_db": (-10.0, -15.0, -20.0),
    "sinr_db": (20.0, 13.0, 0.0),
    "rssi_dbm": (-70.0, -85.0, -100.0),
}


@dataclass(frozen=True)
class Coverage:
    grade: Grade
    #: The metric that set the grade ("rsrp_dbm", "sinr_db" ...) or why there is no service.
    limited_by: str | None = None
    #: Each metric's own grade, for the report.
    per_metric: tuple[tuple[str, Grade], ...] = ()


def grade_value(metric: str, value: float) -> Grade:
    excellent, good, fair = THRESHOLDS[metric]
    if value >= excellent:
        return Grade.EXCELLENT
    if value >= good:
        return Grade.GOOD
    if value >= fair:
        return Grade.FAIR
    return Grade.POOR


def grade(report: SignalReport) -> Coverage:
    """The voice coverage grade of one report."""
    if report.radio_on is False:
        return Coverage(Grade.NO_SERVICE, "radio_off")
    if not report.registration.registered:
        return Coverage(Grade.NO_SERVICE, f"registration_{report.registration.value}")
    metrics: list[tuple[str, float]] = []
    for name in ("rsrp_dbm", "rsrq_db", "sinr_db"):
        value = getattr(report, name)
        if value is not None:
            metrics.append((name, float(value)))
    if not metrics and report.rssi_dbm is not None:
        metrics.append(("rssi_dbm", float(report.rssi_dbm)))
    if not metrics:
        return Coverage(Grade.POOR, "no_measurement")  # registered, but nothing to vouch for
    per = tuple((name, grade_value(name, value)) for name, value in metrics)
    worst_name, worst = max(per, key=lambda item: _ORDER.index(item[1]))
    return Coverage(worst, worst_name, per)
