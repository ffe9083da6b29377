"""Thrift on LTE: which telemetry goes and when (pure, from tables, with a fake time).

The bytes themselves are measured against a real broker in test_mqtt_link.py
(`test_bytes_are_measured_at_the_socket`) and by hil/bench/mqtt_bytes.py.
"""

from __future__ import annotations

from typing import Any

import pytest

from agent.telemetry.contract import TelemetrySample, telemetry_sample
from agent.telemetry.schedule import TelemetryPolicy, TelemetrySchedule, material_change


def sample(t: float = 0.0, **parts: Any) -> TelemetrySample:
    base: dict[str, Any] = {
        "mode": "CELLULAR",
        "links": {
            "primary": {"verdict": "down", "carrier_up": False},
            "cellular": {"verdict": "up", "rtt_ms": 60.0, "loss_pct": 0.0, "mos": 4.2},
        },
        "signal": {"rsrp_dbm": -95.0, "sinr_db": 12.0, "bars": 3, "technology": "lte"},
        "usage": {"used_bytes": 100_000_000, "cap_bytes": 2_000_000_000},
        "agent": {"backlog": 0, "events_dropped": 0, "mqtt_lte_bytes": 1000},
    }
    for key, value in parts.items():
        if key in ("cellular", "primary"):
            base["links"][key] = {**base["links"][key], **value}
        elif isinstance(value, dict):
            base[key] = {**base[key], **value}
        else:
            base[key] = value
    return telemetry_sample(wall_time_s=t, **base)


@pytest.mark.parametrize(
    ("change", "material"),
    [
        ({}, False),
        ({"mode": "RECOVERING"}, True),
        ({"primary": {"verdict": "up"}}, True),
        ({"primary": {"carrier_up": True}}, True),
        ({"cellular": {"rtt_ms": 79.0}}, False),  # under max(20 ms, 25%)
        ({"cellular": {"rtt_ms": 81.0}}, True),
        ({"cellular": {"loss_pct": 1.9}}, False),
        ({"cellular": {"loss_pct": 2.0}}, True),
        ({"cellular": {"mos": 4.0}}, False),
        ({"cellular": {"mos": 3.9}}, True),
        ({"cellular": {"rtt_ms": None}}, False),  # unknown alone is not news
        ({"signal": {"rsrp_dbm": -102.0}}, False),
        ({"signal": {"rsrp_dbm": -103.0}}, True),
        ({"signal": {"sinr_db": 8.0}}, False),
        ({"signal": {"sinr_db": 7.0}}, True),
        ({"signal": {"bars": 4}}, False),
        ({"signal": {"bars": 1}}, True),
        ({"signal": {"technology": "umts"}}, True),
        ({"usage": {"used_bytes": 119_000_000}}, False),  # 1% of 2 GB = 20 MB
        ({"usage": {"used_bytes": 120_000_000}}, True),
        ({"usage": {"cycle_start": "2026-12-01T00:00:00-06:00"}}, True),  # a new plan cycle
        ({"agent": {"backlog": 7, "mqtt_lte_bytes": 99_999}}, False),
        ({"agent": {"events_dropped": 1}}, True),
    ],
)
def test_what_counts_as_a_material_change(change, material):
    assert material_change(sample(), sample(**change)) is material


POLICY = TelemetryPolicy(
    heartbeat_s=300.0, heartbeat_cellular_s=3600.0, batch_cellular_s=900.0, max_batch=3
)


def test_on_the_primary_a_change_goes_at_once_and_a_heartbeat_every_300_s():
    schedule = TelemetrySchedule(POLICY)
    assert schedule.due(0.0, cellular=False) is None  # nothing offered yet
    schedule.offer(sample(0.0), 0.0)
    due = schedule.due(0.0, cellular=False)
    assert due is not None and due.why == "change" and len(due.samples) == 1
    schedule.sent(due, 0.0)
    schedule.offer(sample(60.0), 60.0)  # the same figures: nothing
    assert schedule.due(60.0, cellular=False) is None
    assert schedule.next_due_s(60.0, cellular=False) == 300.0
    schedule.offer(sample(61.0, mode="RECOVERING"), 61.0)  # news: at once
    due = schedule.due(61.0, cellular=False)
    assert due is not None and due.why == "change"
    schedule.sent(due, 61.0)
    schedule.offer(sample(65.0, mode="PRIMARY"), 65.0)  # within min_interval_s: waits
    assert schedule.due(65.0, cellular=False) is None
    assert schedule.due(71.0, cellular=False) is not None
    schedule.sent(schedule.due(71.0, cellular=False), 71.0)  # type: ignore[arg-type]
    hb = schedule.due(371.0, cellular=False)
    assert hb is not None and hb.why == "heartbeat" and hb.samples[0].mode == "PRIMARY"


def test_on_lte_changes_are_batched_bounded_and_the_drops_counted():
    schedule = TelemetrySchedule(POLICY)
    schedule.offer(sample(0.0), 0.0)
    first = schedule.due(0.0, cellular=True)
    assert first is not None  # nothing was ever sent: the first goes at once
    schedule.sent(first, 0.0)
    for n, rtt in enumerate((100.0, 150.0, 220.0, 300.0, 400.0), start=1):
        schedule.offer(sample(n * 10.0, cellular={"rtt_ms": rtt}), n * 10.0)
    assert schedule.due(899.0, cellular=True) is None  # the batch window runs from t=10
    assert schedule.next_due_s(50.0, cellular=True) == 910.0
    due = schedule.due(910.0, cellular=True)
    assert due is not None and due.dropped == 2  # max_batch 3: the two oldest left out
    assert [s.links["cellular"].rtt_ms for s in due.samples] == [220.0, 300.0, 400.0]
    schedule.sent(due, 910.0)
    assert schedule.dropped_total == 2
    assert schedule.due(910.0 + 3599.0, cellular=True) is None
    heartbeat = schedule.due(910.0 + 3600.0, cellular=True)
    assert heartbeat is not None and heartbeat.why == "heartbeat" and heartbeat.dropped == 0


def test_a_month_of_idle_lte_is_one_heartbeat_an_hour():
    """Standby figures that wobble inside the dead bands send nothing but heartbeats."""
    schedule = TelemetrySchedule(POLICY)
    sent = 0
    for minute in range(30 * 24 * 60):
        t = minute * 60.0
        wobble = (minute % 7) - 3  # rsrp +-3 dB, rtt +-3 ms
        schedule.offer(
            sample(t, signal={"rsrp_dbm": -95.0 + wobble}, cellular={"rtt_ms": 60.0 + wobble}), t
        )
        due = schedule.due(t, cellular=True)
        if due is not None:
            schedule.sent(due, t)
            sent += 1
    assert sent == 30 * 24  # the first at t=0, then one an hour


def test_minimum_telemetry_sends_heartbeats_only():
    schedule = TelemetrySchedule(POLICY)
    schedule.offer(sample(0.0), 0.0)
    schedule.sent(schedule.due(0.0, cellular=True), 0.0)  # type: ignore[arg-type]
    schedule.minimum = True
    schedule.offer(sample(10.0, mode="RECOVERING"), 10.0)
    assert schedule.due(10.0 + 900.0, cellular=True) is None  # no change message
    heartbeat = schedule.due(3600.0, cellular=True)
    assert heartbeat is not None and heartbeat.why == "heartbeat"
    assert heartbeat.samples[0].mode == "RECOVERING"  # the latest figures, all the same
