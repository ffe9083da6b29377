"""Plan arithmetic from tables: overage per started GB, alerts once each, the margin,
the month-end projection, talk minutes from the codec, and primary-use findings."""

from __future__ import annotations

import pytest

from agent.meter import budget
from agent.meter.budget import Plan, PrimaryUseLimits

GB = 1_000_000_000
PLAN_2GB = Plan(cap_bytes=2 * GB)
PLAN_1GB = Plan(cap_bytes=1 * GB)


@pytest.mark.parametrize(
    ("plan", "used", "gb_started", "usd"),
    [
        (PLAN_2GB, 0, 0, 0.0),
        (PLAN_2GB, 2 * GB, 0, 0.0),  # exactly at the cap: nothing extra
        (PLAN_2GB, 2 * GB + 1, 1, 15.0),  # one byte over: a whole GB started
        (PLAN_2GB, 3 * GB, 1, 15.0),
        (PLAN_2GB, 3 * GB + 1, 2, 30.0),
        (PLAN_1GB, int(3.5 * GB), 3, 45.0),
        (Plan(cap_bytes=1 << 30, gb_bytes=1 << 30, overage_usd_per_gb=10), (1 << 30) + 1, 1,
         10.0),  # binary GB when configured
    ],
)
def test_overage_is_billed_per_started_gb(plan, used, gb_started, usd):
    assert budget.overage_gb_started(used, plan) == gb_started
    assert budget.overage_usd(used, plan) == usd


@pytest.mark.parametrize(
    ("used", "already", "keys"),
    [
        (int(0.49 * 2 * GB), [], []),
        (1 * GB, [], ["pct:50"]),
        (1 * GB, ["pct:50"], []),  # once per cycle
        (int(1.9 * GB), ["pct:50"], ["pct:75", "pct:90"]),  # a jump announces each
        (2 * GB, ["pct:50", "pct:75", "pct:90"], ["pct:100"]),
        (2 * GB + 1, ["pct:50", "pct:75", "pct:90", "pct:100"], ["overage:1"]),
        (int(4.5 * GB), ["pct:50", "pct:75", "pct:90", "pct:100", "overage:1"],
         ["overage:2", "overage:3"]),
    ],
)
def test_due_alerts(used, already, keys):
    assert [a.key for a in budget.due_alerts(used, PLAN_2GB, already)] == keys


def test_safety_margin_is_added_before_comparing_with_the_cap():
    plan = Plan(cap_bytes=2 * GB, safety_margin_pct=2.0)
    assert budget.billed_bytes(1_000_000, plan) == 1_020_000
    billed = budget.billed_bytes(int(1.97 * GB), plan)  # 1.97 GB measured -> 2.0094 GB
    assert budget.overage_gb_started(billed, plan) == 1
    assert budget.billed_bytes(1, Plan(cap_bytes=GB, safety_margin_pct=1.0)) == 2  # rounds up


def test_telemetry_minimum_at_the_cap():
    assert not budget.telemetry_minimum(2 * GB - 1, PLAN_2GB)
    assert budget.telemetry_minimum(2 * GB, PLAN_2GB)
    early = Plan(cap_bytes=2 * GB, telemetry_minimum_at_pct=90)
    assert budget.telemetry_minimum(int(1.8 * GB), early)


DAY = 86400.0


@pytest.mark.parametrize(
    ("name", "now_days", "used", "samples", "rate_per_day", "end"),
    [
        ("young cycle: rate since its start", 10, 500_000_000, [], 50_000_000,
         500_000_000 + 20 * 50_000_000),
        ("rate over the last 7 days, not the month's average", 20, 1_000_000_000,
         [(0, 0), (6, 100_000_000), (13, 300_000_000)], 1e8, 2_000_000_000),
        ("quiet last week projects no growth", 20, 800_000_000,
         [(0, 0), (12, 800_000_000), (13, 800_000_000)], 0.0, 800_000_000),
        ("at the cycle's end nothing more is projected", 30, 700_000_000, [(0, 0)],
         700_000_000 / 30, 700_000_000),
    ],
)
def test_projection(name, now_days, used, samples, rate_per_day, end):
    proj = budget.projection(
        used, now_days * DAY, 0.0, 30 * DAY,
        [(d * DAY, b) for d, b in samples], 7 * DAY, PLAN_2GB,
    )
    assert proj.rate_bytes_per_s * DAY == pytest.approx(rate_per_day), name
    assert proj.end_bytes == pytest.approx(end, abs=1), name


def test_projection_prices_the_overage():
    proj = budget.projection(1_500_000_000, 15 * DAY, 0.0, 30 * DAY, [], 7 * DAY, PLAN_2GB)
    assert proj.end_bytes == 3_000_000_000
    assert proj.end_overage_usd == 15.0 and proj.end_percent == 150.0


@pytest.mark.parametrize(
    ("codec", "ptime", "per_minute"),
    [
        ("g711", 20, 1_200_000),  # the provider's "about 1.2 MB per call-minute"
        ("g711", 30, 1_120_000),  # fewer, larger packets: less header
        ("g729", 20, 360_000),
        ("g729", 40, 240_000),
    ],
)
def test_call_bytes_per_minute_from_packet_sizes(codec, ptime, per_minute):
    assert budget.call_bytes_per_minute(codec, ptime) == per_minute


def test_minutes_left_match_the_providers_estimate():
    # "750 minutes of talk use about 1 GB": 1 GB / 1.2 MB = 833 minutes, same ballpark.
    assert budget.minutes_left(0, PLAN_1GB, 1_200_000) == pytest.approx(833.3, abs=0.1)
    assert budget.minutes_left(int(0.9 * GB), PLAN_1GB, 360_000) == pytest.approx(277.8, abs=0.1)
    assert budget.minutes_left(2 * GB, PLAN_1GB, 1_200_000) == 0


def test_unknown_codec_is_one_clear_error():
    with pytest.raises(ValueError, match="known codecs are g711, g729"):
        budget.call_bytes_per_minute("opus")


@pytest.mark.parametrize(
    ("lte_s", "healthy_s", "idle", "elapsed_s", "keys"),
    [
        (3600, 0, 1_000_000, 10 * DAY, []),  # an hour's outage in ten days: fine
        (3600, 600, 0, 10 * DAY, ["primary_healthy"]),
        (0, 0, 80_000_000, 10 * DAY, ["idle_bytes"]),
        (4 * DAY, 0, 0, 10 * DAY, ["lte_share"]),  # 40 % of the cycle on LTE
        (1 * DAY, 0, 0, 1.5 * DAY, []),  # a first-days outage is not a pattern yet
    ],
)
def test_primary_use_findings(lte_s, healthy_s, idle, elapsed_s, keys):
    found = budget.primary_use_findings(
        lte_s=lte_s, lte_primary_healthy_s=healthy_s, idle_ip_bytes=idle,
        cycle_elapsed_s=elapsed_s, limits=PrimaryUseLimits(),
    )
    assert [f.key for f in found] == keys
    assert all(f.sentence.endswith(".") for f in found)
