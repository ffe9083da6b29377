"""The snapshot and its rendering: figures people read and the fleet receives."""

from __future__ import annotations

from datetime import datetime

from agent.meter.budget import Plan
from agent.meter.ledger import Count, MeterDoc, MeterRules, Totals, apply
from agent.meter.report import render, snapshot, telemetry_figures

GB = 1_000_000_000
RULES = MeterRules(plan=Plan(cap_bytes=2 * GB, safety_margin_pct=1.0), timezone="America/Chicago")


def at(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def books(ip_per_day: int, days: int) -> tuple[MeterDoc, float]:
    doc = MeterDoc()
    start = at("2024-04-01T00:00:00-05:00")
    for day in range(days * 4):  # every 6 hours
        wall = start + day * 21600 + 1
        doc = apply(doc, [Count(Totals(rx_ip_bytes=ip_per_day // 4), 0.0, "b", wall)], RULES,
                    wall)
    return doc, start + days * 86400


def test_snapshot_figures():
    doc, now = books(100_000_000, 10)  # 100 MB a day for 10 days of April
    snap = snapshot(doc, RULES, now, clock_trusted=True, clock_reason="plausible")
    assert snap["ip_bytes"] == 1 * GB
    assert snap["used_bytes"] == 1_010_000_000  # the 1 % margin
    assert snap["percent"] == 50.5 and snap["overage_usd"] == 0.0
    assert snap["cycle"]["start"] == "2024-04-01T00:00:00-05:00"
    assert snap["cycle"]["end"] == "2024-05-01T00:00:00-05:00"
    proj = snap["projection"]
    # 20 more days at the last week's ~100 MB/day (billed): ~2.97 GB, one overage GB.
    assert 2.9 * GB < proj["end_bytes"] < 3.0 * GB
    assert proj["end_overage_usd"] == 15.0 and proj["window_hours"] >= 7 * 24
    assert snap["minutes_left"] == round((2 * GB - 1_010_000_000) / 1_200_000, 1)
    assert snap["split"]["voice_bytes"] is None
    figures = telemetry_figures(snap)
    assert figures["used_bytes"] == snap["used_bytes"] and figures["clock_trusted"] is True
    text = render(snap)
    assert "1.010 GB of 2 GB (50.5 %)" in text and "Projected" in text and "$15.00" in text


def test_no_projection_from_too_little_history_and_untrusted_clock_is_said():
    doc = apply(MeterDoc(), [Count(Totals(rx_ip_bytes=10), 0.0, "b", None)], RULES, 0.0)
    snap = snapshot(doc, RULES, 0.0, clock_trusted=False, clock_reason="waiting for NTP")
    assert snap["projection"] is None and snap["cycle"] is None
    assert snap["held_ip_bytes"] == 10 and snap["ip_bytes"] == 10
    assert any("not trusted" in w for w in snap["warnings"])
    assert "not started" in render(snap)
