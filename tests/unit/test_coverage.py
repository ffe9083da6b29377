"""Voice coverage grades from tables: thresholds (Teltonika's), worst metric wins, no service."""

from __future__ import annotations

import pytest

from agent.coverage import Grade, grade, grade_value
from drivers.types import Registration, SignalReport

HOME = Registration.HOME


@pytest.mark.parametrize(
    ("metric", "value", "expected"),
    [
        ("rsrp_dbm", -70, Grade.EXCELLENT),
        ("rsrp_dbm", -80, Grade.EXCELLENT),
        ("rsrp_dbm", -80.5, Grade.GOOD),
        ("rsrp_dbm", -90, Grade.GOOD),
        ("rsrp_dbm", -95, Grade.FAIR),
        ("rsrp_dbm", -100, Grade.FAIR),
        ("rsrp_dbm", -101, Grade.POOR),
        ("rsrp_dbm", -125, Grade.POOR),
        ("rsrq_db", -9, Grade.EXCELLENT),
        ("rsrq_db", -12, Grade.GOOD),
        ("rsrq_db", -18, Grade.FAIR),
        ("rsrq_db", -20.5, Grade.POOR),
        ("sinr_db", 25, Grade.EXCELLENT),
        ("sinr_db", 13, Grade.GOOD),
        ("sinr_db", 0, Grade.FAIR),
        ("sinr_db", -3, Grade.POOR),
        ("rssi_dbm", -65, Grade.EXCELLENT),
        ("rssi_dbm", -90, Grade.FAIR),
        ("rssi_dbm", -105, Grade.POOR),
    ],
)
def test_metric_bands(metric, value, expected):
    assert grade_value(metric, value) is expected


@pytest.mark.parametrize(
    ("report", "expected", "limited_by"),
    [
        (SignalReport(HOME, rsrp_dbm=-75, rsrq_db=-8, sinr_db=22), Grade.EXCELLENT, "rsrp_dbm"),
        (SignalReport(HOME, rsrp_dbm=-75, rsrq_db=-8, sinr_db=-2), Grade.POOR, "sinr_db"),
        (SignalReport(HOME, rsrp_dbm=-95, rsrq_db=-12, sinr_db=15), Grade.FAIR, "rsrp_dbm"),
        (SignalReport(HOME, rsrp_dbm=-85), Grade.GOOD, "rsrp_dbm"),
        (SignalReport(Registration.ROAMING, rsrp_dbm=-85, rsrq_db=-16), Grade.FAIR, "rsrq_db"),
        (SignalReport(HOME, rssi_dbm=-80), Grade.GOOD, "rssi_dbm"),  # 3G: RSSI only
        (SignalReport(HOME, rsrp_dbm=-85, rssi_dbm=-110), Grade.GOOD, "rsrp_dbm"),  # RSSI ignored
        (SignalReport(HOME), Grade.POOR, "no_measurement"),
        (SignalReport(Registration.SEARCHING, rsrp_dbm=-75), Grade.NO_SERVICE,
         "registration_searching"),
        (SignalReport(Registration.DENIED, rsrp_dbm=-75), Grade.NO_SERVICE, "registration_denied"),
        (SignalReport(Registration.UNKNOWN), Grade.NO_SERVICE, "registration_unknown"),
        (SignalReport(HOME, rsrp_dbm=-75, radio_on=False), Grade.NO_SERVICE, "radio_off"),
    ],
)
def test_grades(report, expected, limited_by):
    c = grade(report)
    assert (c.grade, c.limited_by) == (expected, limited_by)


def test_per_metric_detail():
    c = grade(SignalReport(HOME, rsrp_dbm=-85, rsrq_db=-8, sinr_db=5))
    assert dict(c.per_metric) == {
        "rsrp_dbm": Grade.GOOD, "rsrq_db": Grade.EXCELLENT, "sinr_db": Grade.FAIR}
