"""A modem report as the status file, the CLI and telemetry show it.

Privacy (house rule 11): the ICCID and IMEI are device identifiers the provider needs to
run the service, so the status file has them; telemetry carries radio figures only.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any

from agent.coverage import Coverage, Grade
from drivers.types import SignalReport

#: Phone-style bars from the coverage grade (the providers' terms use bars as the guide).
BARS = {"excellent": 5, "good": 4, "fair": 3, "poor": 1, "no_service": 0}


def _plain(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    return value


def report_figures(report: SignalReport, coverage: Coverage) -> dict[str, Any]:
    figures = {k: _plain(v) for k, v in dataclasses.asdict(report).items()}
    figures["coverage"] = _plain(coverage.grade)
    figures["coverage_limited_by"] = coverage.limited_by
    return figures


def signal_telemetry(report: SignalReport, coverage: Coverage) -> dict[str, Any]:
    grade = coverage.grade.value if isinstance(coverage.grade, Grade) else str(coverage.grade)
    tech = report.access_tech.value if report.access_tech is not None else None
    return {
        "rsrp_dbm": report.rsrp_dbm,
        "rsrq_db": report.rsrq_db,
        "sinr_db": report.sinr_db,
        "rssi_dbm": report.rssi_dbm,
        "technology": tech[:16] if tech is not None else None,
        "bars": BARS.get(grade),
    }
