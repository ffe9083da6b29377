"""Billing cycles: calendar months starting on a configured day, in the plan's time
zone. Pure (zoneinfo reads the system's time-zone table once, like a constant).

Carriers bill "within the calendar month" in their local time. A cycle starts at local
midnight on `start_day` (1-31) and ends where the next one starts. A start day the month
does not have is clamped to its last day: with 31, the cycles start on Jan 31, Feb 28
(29 in a leap year), Mar 31, Apr 30 ...

Local midnight is taken with `fold=0`: where DST makes midnight happen twice (clocks go
back at 01:00 to 00:00, as in Cuba), the cycle starts at the first one; where midnight
does not exist (clocks jump 00:00 -> 01:00, as in Chile), at the instant of the jump,
which is the first moment of that local day.
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass
from datetime import date, datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError


class CycleError(ValueError):
    """A start day or time zone the cycle cannot be computed for."""


@dataclass(frozen=True)
class Cycle:
    start_wall_s: float
    end_wall_s: float
    #: Local dates, e.g. "2024-02-29": the cycle's name.
    start_date: str
    end_date: str
    timezone: str

    def contains(self, wall_s: float) -> bool:
        return self.start_wall_s <= wall_s < self.end_wall_s

    @property
    def length_s(self) -> float:
        return self.end_wall_s - self.start_wall_s

    def iso(self, wall_s: float) -> str:
        """A wall time as local ISO 8601 with its UTC offset, for people."""
        return datetime.fromtimestamp(wall_s, zone(self.timezone)).isoformat(timespec="seconds")


def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise CycleError(
            f"unknown time zone {name!r}; use an IANA name such as 'America/Chicago'"
        ) from exc


def start_date(year: int, month: int, start_day: int) -> date:
    """The day a cycle starts in a given month: `start_day`, clamped to the month's length."""
    if not 1 <= start_day <= 31:
        raise CycleError(f"cycle start day {start_day} is not between 1 and 31")
    return date(year, month, min(start_day, calendar.monthrange(year, month)[1]))


def local_midnight_s(day: date, tz: ZoneInfo) -> float:
    return datetime(day.year, day.month, day.day, tzinfo=tz, fold=0).timestamp()


def cycle_at(wall_s: float, start_day: int, timezone: str) -> Cycle:
    """The cycle that contains `wall_s`."""
    tz = zone(timezone)
    local = datetime.fromtimestamp(wall_s, tz)
    year, month = local.year, local.month
    first = start_date(year, month, start_day)
    if local_midnight_s(first, tz) > wall_s:
        year, month = _previous_month(year, month)
        first = start_date(year, month, start_day)
    nxt = start_date(*_next_month(first.year, first.month), start_day)
    return Cycle(
        start_wall_s=local_midnight_s(first, tz),
        end_wall_s=local_midnight_s(nxt, tz),
        start_date=first.isoformat(),
        end_date=nxt.isoformat(),
        timezone=timezone,
    )


def cycle_from(start_wall_s: float, start_day: int, timezone: str) -> Cycle:
    """A cycle that began at `start_wall_s` (as persisted) and ends at the next boundary.

    When the plan's start day or time zone changed since, the persisted start stays and
    the cycle ends at the first boundary of the new plan after it (never before it).
    """
    current = cycle_at(start_wall_s, start_day, timezone)
    tz = zone(timezone)
    return Cycle(
        start_wall_s=start_wall_s,
        end_wall_s=current.end_wall_s,
        start_date=datetime.fromtimestamp(start_wall_s, tz).date().isoformat(),
        end_date=current.end_date,
        timezone=timezone,
    )


def _previous_month(year: int, month: int) -> tuple[int, int]:
    return (year - 1, 12) if month == 1 else (year, month - 1)


def _next_month(year: int, month: int) -> tuple[int, int]:
    return (year + 1, 1) if month == 12 else (year, month + 1)
