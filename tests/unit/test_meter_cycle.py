"""Billing cycles from tables: month ends (February, leap years, start day 31), year
ends, DST changes (including a midnight that does not exist and one that happens
twice) and time zones east and west, whole and fractional."""

from __future__ import annotations

from datetime import datetime

import pytest

from agent.meter.cycle import CycleError, cycle_at, cycle_from


def at(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


@pytest.mark.parametrize(
    ("now", "day", "tz", "start", "end"),
    [
        # plain months, UTC
        ("2024-02-15T12:00:00+00:00", 1, "UTC", "2024-02-01T00:00:00+00:00",
         "2024-03-01T00:00:00+00:00"),
        ("2024-03-01T00:00:00+00:00", 1, "UTC", "2024-03-01T00:00:00+00:00",
         "2024-04-01T00:00:00+00:00"),
        ("2024-02-29T23:59:59+00:00", 1, "UTC", "2024-02-01T00:00:00+00:00",
         "2024-03-01T00:00:00+00:00"),
        # year end
        ("2024-01-10T00:00:00+00:00", 15, "UTC", "2023-12-15T00:00:00+00:00",
         "2024-01-15T00:00:00+00:00"),
        ("2023-12-31T23:59:59+00:00", 1, "UTC", "2023-12-01T00:00:00+00:00",
         "2024-01-01T00:00:00+00:00"),
        # start day 31: clamped to the month's last day
        ("2024-02-15T00:00:00+00:00", 31, "UTC", "2024-01-31T00:00:00+00:00",
         "2024-02-29T00:00:00+00:00"),
        ("2024-02-29T00:00:00+00:00", 31, "UTC", "2024-02-29T00:00:00+00:00",
         "2024-03-31T00:00:00+00:00"),
        ("2023-02-27T23:59:59+00:00", 31, "UTC", "2023-01-31T00:00:00+00:00",
         "2023-02-28T00:00:00+00:00"),
        ("2023-02-28T00:00:00+00:00", 31, "UTC", "2023-02-28T00:00:00+00:00",
         "2023-03-31T00:00:00+00:00"),
        ("2024-04-30T12:00:00+00:00", 31, "UTC", "2024-04-30T00:00:00+00:00",
         "2024-05-31T00:00:00+00:00"),
        ("2024-04-29T12:00:00+00:00", 31, "UTC", "2024-03-31T00:00:00+00:00",
         "2024-04-30T00:00:00+00:00"),
        # leap years: 2024 and 2000 are, 2023 and 2100 are not
        ("2024-03-05T00:00:00+00:00", 30, "UTC", "2024-02-29T00:00:00+00:00",
         "2024-03-30T00:00:00+00:00"),
        ("2023-03-05T00:00:00+00:00", 29, "UTC", "2023-02-28T00:00:00+00:00",
         "2023-03-29T00:00:00+00:00"),
        ("2000-03-01T00:00:00+00:00", 29, "UTC", "2000-02-29T00:00:00+00:00",
         "2000-03-29T00:00:00+00:00"),
        ("2100-03-01T00:00:00+00:00", 29, "UTC", "2100-02-28T00:00:00+00:00",
         "2100-03-29T00:00:00+00:00"),
        # America/Chicago: the month boundary is local midnight; DST in March and November
        ("2024-03-01T05:59:59+00:00", 1, "America/Chicago", "2024-02-01T00:00:00-06:00",
         "2024-03-01T00:00:00-06:00"),
        ("2024-03-01T06:00:00+00:00", 1, "America/Chicago", "2024-03-01T00:00:00-06:00",
         "2024-04-01T00:00:00-05:00"),
        ("2024-11-15T12:00:00+00:00", 1, "America/Chicago", "2024-11-01T00:00:00-05:00",
         "2024-12-01T00:00:00-06:00"),
        # Chile: DST starts at midnight (00:00 -> 01:00): the day starts at 01:00
        ("2022-09-11T12:00:00+00:00", 11, "America/Santiago", "2022-09-11T01:00:00-03:00",
         "2022-10-11T00:00:00-03:00"),
        ("2022-09-11T03:59:59+00:00", 11, "America/Santiago", "2022-08-11T00:00:00-04:00",
         "2022-09-11T01:00:00-03:00"),
        # Cuba: DST ends at 01:00 -> 00:00, so midnight happens twice: the first counts
        ("2024-11-03T04:30:00+00:00", 3, "America/Havana", "2024-11-03T00:00:00-04:00",
         "2024-12-03T00:00:00-05:00"),
        ("2024-11-03T03:59:59+00:00", 3, "America/Havana", "2024-10-03T00:00:00-04:00",
         "2024-11-03T00:00:00-04:00"),
        # southern hemisphere and fractional offsets
        ("2024-10-15T00:00:00+00:00", 1, "Australia/Sydney", "2024-10-01T00:00:00+10:00",
         "2024-11-01T00:00:00+11:00"),
        ("2024-06-30T18:15:00+00:00", 1, "Asia/Kathmandu", "2024-07-01T00:00:00+05:45",
         "2024-08-01T00:00:00+05:45"),
        ("2024-06-30T18:14:59+00:00", 1, "Asia/Kathmandu", "2024-06-01T00:00:00+05:45",
         "2024-07-01T00:00:00+05:45"),
        ("2024-12-31T10:00:00+00:00", 1, "Pacific/Kiritimati", "2025-01-01T00:00:00+14:00",
         "2025-02-01T00:00:00+14:00"),
    ],
)
def test_cycle_at(now, day, tz, start, end):
    cycle = cycle_at(at(now), day, tz)
    assert cycle.iso(cycle.start_wall_s) == start
    assert cycle.iso(cycle.end_wall_s) == end
    assert cycle.start_wall_s == at(start) and cycle.end_wall_s == at(end)
    assert cycle.contains(at(now))
    assert cycle.start_date == start[:10] and cycle.end_date == end[:10]


@pytest.mark.parametrize(
    ("day", "tz", "start", "hours"),
    [
        (1, "America/Chicago", "2024-03-01T00:00:00-06:00", 31 * 24 - 1),  # spring forward
        (1, "America/Chicago", "2024-11-01T00:00:00-05:00", 30 * 24 + 1),  # fall back
        (31, "UTC", "2024-01-31T00:00:00+00:00", 29 * 24),  # Jan 31 -> Feb 29
        (31, "UTC", "2023-01-31T00:00:00+00:00", 28 * 24),  # Jan 31 -> Feb 28
    ],
)
def test_cycle_lengths_follow_the_calendar(day, tz, start, hours):
    assert cycle_at(at(start), day, tz).length_s == hours * 3600


def test_consecutive_cycles_tile_time_with_no_gap_or_overlap():
    for tz in ("UTC", "America/Chicago", "America/Santiago", "America/Havana", "Asia/Kathmandu"):
        for day in (1, 15, 28, 29, 30, 31):
            cycle = cycle_at(at("2023-12-20T00:00:00+00:00"), day, tz)
            for _ in range(30):
                following = cycle_at(cycle.end_wall_s, day, tz)
                assert following.start_wall_s == cycle.end_wall_s, (tz, day, cycle)
                assert following.end_wall_s > following.start_wall_s
                cycle = following


def test_a_changed_start_day_keeps_the_persisted_start_and_ends_at_the_next_boundary():
    started = at("2024-03-01T00:00:00+00:00")  # cycles started on the 1st ...
    cycle = cycle_from(started, 15, "UTC")  # ... and now on the 15th
    assert cycle.start_wall_s == started
    assert cycle.iso(cycle.end_wall_s) == "2024-03-15T00:00:00+00:00"


@pytest.mark.parametrize(("day", "tz"), [(0, "UTC"), (32, "UTC"), (1, "Mars/Olympus")])
def test_bad_plans_are_one_clear_error(day, tz):
    with pytest.raises(CycleError):
        cycle_at(at("2024-01-01T00:00:00+00:00"), day, tz)
