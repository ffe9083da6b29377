"""The meter's document: bytes to cycles, alerts once, held bytes given their time,
cycles rolled only on trusted time, the CLI's reset, and compaction."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

from agent.meter.budget import Plan
from agent.meter.clocktrust import Anchor
from agent.meter.ledger import (
    EV_CYCLE,
    EV_OVERAGE,
    EV_PRIMARY_USE,
    EV_RESET,
    EV_THRESHOLD,
    Count,
    MeterDoc,
    MeterRules,
    Totals,
    apply,
    compact,
    drop_reported,
    reset,
    usage_bytes,
)

GB = 1_000_000_000
RULES = MeterRules(plan=Plan(cap_bytes=2 * GB), start_day=1, timezone="America/Chicago")
BOOT = "boot-a"


def at(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def count(ip: int, wall: float | None, mono: float = 0.0, anchor: Anchor | None = None,
          **extra) -> Count:
    return Count(Totals(rx_ip_bytes=ip // 2, tx_ip_bytes=ip - ip // 2, **extra), mono, BOOT,
                 wall, anchor)


MAR_10 = at("2024-03-10T12:00:00-05:00")


def test_bytes_add_up_in_the_cycle_of_their_time():
    doc = apply(MeterDoc(), [count(1000, MAR_10), count(500, MAR_10 + 5)], RULES, MAR_10 + 5)
    assert doc.cycle is not None
    assert doc.cycle.totals.ip_bytes == 1500
    assert doc.cycle.start_wall_s == at("2024-03-01T00:00:00-06:00")
    assert doc.outbox == ()


def test_thresholds_are_raised_once_with_figures():
    doc = apply(MeterDoc(), [count(GB, MAR_10)], RULES, MAR_10)
    assert [e.kind for e in doc.outbox] == [EV_THRESHOLD]
    event = doc.outbox[0]
    assert event.data["threshold_pct"] == 50.0 and event.data["percent"] == 50.0
    assert event.data["minutes_left"] == round(GB / 1_200_000, 1)
    assert event.data["cycle_start"] == "2024-03-01"
    again = apply(doc, [count(1000, MAR_10 + 5)], RULES, MAR_10 + 5)
    assert len(again.outbox) == 1  # not twice
    over = apply(again, [count(GB + 10**6, MAR_10 + 10)], RULES, MAR_10 + 10)
    kinds = [(e.kind, e.data.get("threshold_pct"), e.data.get("overage_gb")) for e in over.outbox]
    assert kinds[1:] == [
        (EV_THRESHOLD, 75.0, None),
        (EV_THRESHOLD, 90.0, None),
        (EV_THRESHOLD, 100.0, None),
        (EV_OVERAGE, None, 1),
    ]
    assert over.outbox[-1].data["overage_usd"] == 15.0
    assert over.outbox[-1].data["telemetry_minimum"] is True
    ids = [e.id for e in over.outbox]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert drop_reported(over, set(ids[:2])).outbox == over.outbox[2:]


def test_a_new_cycle_starts_at_local_midnight_with_a_summary_of_the_last():
    doc = apply(MeterDoc(), [count(300 * 10**6, MAR_10, lte_s=3600.0)], RULES, MAR_10)
    before_midnight = at("2024-03-31T23:59:59-05:00")
    after_midnight = at("2024-04-01T00:00:05-05:00")
    doc = apply(doc, [count(1000, before_midnight), count(2000, after_midnight)], RULES,
                after_midnight)
    assert doc.cycle is not None
    assert doc.cycle.start_wall_s == at("2024-04-01T00:00:00-05:00")
    assert doc.cycle.totals.ip_bytes == 2000 and doc.cycle.alerts == ()
    cycle_events = [e for e in doc.outbox if e.kind == EV_CYCLE]
    assert len(cycle_events) == 1
    summary = cycle_events[0].data["previous"]
    assert summary["ip_bytes"] == 300 * 10**6 + 1000
    assert summary["cycle_start"] == "2024-03-01" and summary["cycle_end"] == "2024-04-01"
    assert summary["lte_hours"] == 1.0
    assert doc.history[-1] == summary


def test_untrusted_bytes_are_held_then_given_their_true_time():
    # The last cycle seen is March; the box reboots with a stale clock near the month's
    # end and counts 1000 B at monotonic 10 s and 2000 B at 400 s, untrusted.
    doc = apply(MeterDoc(), [count(100, MAR_10)], RULES, MAR_10)
    doc = apply(doc, [count(1000, None, mono=10.0), count(2000, None, mono=400.0)], RULES, 0.0)
    assert doc.cycle is not None and doc.cycle.totals.ip_bytes == 100
    assert doc.held_totals.ip_bytes == 3000
    assert usage_bytes(doc, RULES) == 3100  # held bytes count against the cap meanwhile
    # NTP: monotonic 500 s is 2024-04-01T00:05:00 local, so mono 10 s was March 31
    # 23:56:50 and mono 400 s was April 1 00:03:20.
    true_500 = at("2024-04-01T00:05:00-05:00")
    anchor = Anchor(BOOT, 500.0, true_500)
    doc = apply(doc, [count(4000, true_500, mono=500.0, anchor=anchor)], RULES, true_500)
    assert doc.held == ()
    assert doc.history[-1]["ip_bytes"] == 100 + 1000  # March
    assert doc.cycle.totals.ip_bytes == 2000 + 4000  # April
    assert doc.cycle.start_wall_s == at("2024-04-01T00:00:00-05:00")


def test_held_bytes_from_another_boot_go_to_the_time_trust_came():
    doc = apply(MeterDoc(), [count(100, MAR_10)], RULES, MAR_10)
    doc = apply(doc, [Count(Totals(rx_ip_bytes=700), 10.0, "boot-old", None)], RULES, 0.0)
    anchor = Anchor(BOOT, 50.0, MAR_10 + 60)
    doc = apply(doc, [count(0, MAR_10 + 60, mono=50.0, anchor=anchor)], RULES, MAR_10 + 60)
    assert doc.held == () and doc.cycle is not None and doc.cycle.totals.ip_bytes == 800


def test_a_clock_without_trust_never_rolls_a_cycle():
    doc = apply(MeterDoc(), [count(100, MAR_10)], RULES, MAR_10)
    far_future = at("2031-01-01T00:00:00+00:00")
    doc = apply(doc, [count(1000, None, mono=5.0)], RULES, far_future)
    assert doc.cycle is not None and doc.cycle.start_wall_s == at("2024-03-01T00:00:00-06:00")
    assert [e.kind for e in doc.outbox if e.kind == EV_CYCLE] == []


def test_time_before_the_cycle_never_takes_it_back():
    doc = apply(MeterDoc(), [count(100, MAR_10)], RULES, MAR_10)
    doc = apply(doc, [count(50, at("2024-02-10T00:00:00-06:00"))], RULES, MAR_10)
    assert doc.cycle is not None
    assert doc.cycle.start_wall_s == at("2024-03-01T00:00:00-06:00")
    assert doc.cycle.totals.ip_bytes == 150


def test_primary_use_is_reported_once_per_cycle():
    doc = apply(MeterDoc(), [count(10, MAR_10, lte_s=700.0, lte_primary_healthy_s=600.0)],
                RULES, MAR_10)
    assert [e.data["finding"] for e in doc.outbox if e.kind == EV_PRIMARY_USE] == [
        "primary_healthy"
    ]
    doc = apply(doc, [count(10, MAR_10 + 5, lte_s=5.0, lte_primary_healthy_s=5.0)], RULES,
                MAR_10 + 5)
    assert len([e for e in doc.outbox if e.kind == EV_PRIMARY_USE]) == 1


def test_reset_zeroes_the_cycle_keeps_the_reading_and_records_why():
    doc = apply(MeterDoc(), [count(GB, MAR_10)], RULES, MAR_10)
    doc = apply(doc, [count(500, None, mono=3.0)], RULES, MAR_10)
    done = reset(doc, "carrier reset the plan (ticket 4711)", MAR_10 + 60, RULES)
    assert done.cycle is not None and done.cycle.totals == Totals() and done.held == ()
    assert done.cycle.alerts == () and done.cycle.resets == 1
    assert done.cycle.start_wall_s == doc.cycle.start_wall_s
    event = done.outbox[-1]
    assert event.kind == EV_RESET
    assert event.data["reason"] == "carrier reset the plan (ticket 4711)"
    assert event.data["ip_bytes_before"] == GB + 500
    # Alerts start over: the 50 % threshold can be announced again.
    again = apply(done, [count(GB, MAR_10 + 120)], RULES, MAR_10 + 120)
    assert [e.data.get("threshold_pct") for e in again.outbox if e.kind == EV_THRESHOLD][-1] == 50


def test_compaction_keeps_every_byte_and_the_cycle_boundary():
    walls = [at("2024-03-31T23:59:00-05:00") + 20 * i for i in range(6)]  # crosses midnight
    counts = [count(100, w) for w in walls] + [count(7, None, mono=1.0), count(8, None, mono=2.0)]
    folded = compact(counts, RULES)
    assert len(folded) == 3
    assert sum(c.totals.ip_bytes for c in folded) == sum(c.totals.ip_bytes for c in counts)
    direct = apply(MeterDoc(), counts, RULES, walls[-1])
    via = apply(MeterDoc(), folded, RULES, walls[-1])
    assert direct.cycle == via.cycle and direct.history == via.history


def test_document_round_trips_through_json():
    doc = apply(MeterDoc(), [count(GB, MAR_10, lte_s=3.5), count(9, None, mono=4.0)], RULES,
                MAR_10)
    doc = replace(doc, revision=7)
    assert MeterDoc.from_json(doc.to_json()) == doc


def test_held_buckets_are_bounded_and_keep_every_byte_and_an_even_resolution():
    from agent.meter.ledger import MAX_HELD_BUCKETS

    doc = MeterDoc()
    for i in range(1000):  # 1000 polls, 5 s apart, untrusted
        doc = apply(doc, [count(10, None, mono=5.0 * i)], RULES, 0.0)
    assert len(doc.held) == MAX_HELD_BUCKETS
    assert doc.held_totals.ip_bytes == 10_000
    spans = [b.last_monotonic_s - b.first_monotonic_s for b in doc.held]  # type: ignore[operator]
    assert max(spans) <= 3 * 5000 / MAX_HELD_BUCKETS  # ~78 s each, none much coarser
    ordered = [b.first_monotonic_s for b in doc.held]
    assert ordered == sorted(ordered)


def test_held_buckets_of_different_boots_are_not_mixed_up():
    doc = apply(MeterDoc(), [Count(Totals(rx_ip_bytes=5), 1.0, "boot-x", None)], RULES, 0.0)
    for i in range(100):
        doc = apply(doc, [count(1, None, mono=float(i))], RULES, 0.0)
    assert doc.held_totals.ip_bytes == 105
    assert doc.held[0].host_boot_id == "boot-x"  # its neighbours merged among themselves
