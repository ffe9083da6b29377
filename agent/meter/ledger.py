"""How counted bytes change the meter's books (agent/meter/books.py). Pure.

The books are changed only inside a write transaction, by `apply` (the running meter)
or `reset` (the CLI, the fleet): the meter never writes its in-memory copy over the
stored one, so a reset made while it runs survives.

`apply` takes what the meter counted since the last write (a list of `Count`s, in
order) and returns the new document; the events it raises go into `outbox` in the same
write, so an alert is never lost between a commit and a crash (the shell hands them to
the store after the commit and drops them from the outbox in its next write).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from agent.meter import budget
from agent.meter.books import (
    Count,
    CycleRecord,
    HeldBucket,
    MeterDoc,
    MeterRules,
    OutEvent,
    Totals,
)
from agent.meter.clocktrust import Anchor
from agent.meter.cycle import Cycle

__all__ = [  # the books' values, re-exported: callers need both halves together
    "Count",
    "CycleRecord",
    "HeldBucket",
    "MeterDoc",
    "MeterRules",
    "OutEvent",
    "Totals",
]

#: At most this many held buckets. Beyond it the two neighbours spanning the least time
#: are merged: every byte is kept, and the time resolution stays even (a quarter of an
#: hour untrusted is held to about 15 s, a day to about 25 min).
MAX_HELD_BUCKETS = 64
#: Completed cycles kept in the document for the CLI (all are in the event log).
HISTORY_CYCLES = 3

# Event kinds (agent.domain.EventKind values; kept as text here so the document can be
# read without the agent's vocabulary).
EV_THRESHOLD = "meter_threshold"
EV_OVERAGE = "meter_overage"
EV_CYCLE = "meter_cycle"
EV_RESET = "meter_reset"
EV_PRIMARY_USE = "meter_primary_use"


# --- counting ---------------------------------------------------------------------------


def apply(doc: MeterDoc, counts: Sequence[Count], rules: MeterRules, now_wall_s: float) -> MeterDoc:
    """The document after `counts` (in order). Alerts due go to the outbox, stamped
    `now_wall_s` (the best wall time there is, trusted or not)."""
    for count in counts:
        if count.wall_s is None:
            doc = _hold(doc, count)
            continue
        if doc.held:
            doc = _release(doc, count.anchor, count.wall_s, rules, now_wall_s)
        doc = _attribute(doc, count.wall_s, count.totals, rules, now_wall_s)
    return evaluate(doc, rules, now_wall_s)


def _hold(doc: MeterDoc, count: Count) -> MeterDoc:
    held = [
        *doc.held,
        HeldBucket(count.host_boot_id, count.monotonic_s, count.monotonic_s, count.totals),
    ]
    while len(held) > MAX_HELD_BUCKETS:
        held = _merge_closest(held)
    return replace(doc, held=tuple(held))


def _merge_closest(held: list[HeldBucket]) -> list[HeldBucket]:
    """One bucket fewer: the neighbours of one boot that together span the least time
    (or, when no two share a boot, the oldest two, whose time is then unknown)."""
    best: int | None = None
    best_span = 0.0
    for i in range(len(held) - 1):
        a, b = held[i], held[i + 1]
        first, last = a.first_monotonic_s, b.last_monotonic_s
        if a.host_boot_id != b.host_boot_id or first is None or last is None or not a.timed:
            continue
        span = last - first
        if best is None or span < best_span:
            best, best_span = i, span
    if best is None:
        a, b = held[0], held[1]
        return [HeldBucket(None, None, None, a.totals + b.totals), *held[2:]]
    a, b = held[best], held[best + 1]
    merged = HeldBucket(a.host_boot_id, a.first_monotonic_s, b.last_monotonic_s,
                        a.totals + b.totals)
    return [*held[:best], merged, *held[best + 2 :]]


def _release(
    doc: MeterDoc, anchor: Anchor | None, wall_s: float, rules: MeterRules, now_wall_s: float
) -> MeterDoc:
    """Give held bytes their true wall time and attribute them, oldest first.

    Bytes held in this boot get `anchor.project(monotonic)`: the moment they were
    really counted. Bytes from another boot (the agent restarted after a reboot before
    the clock was set) have no usable time and go to `wall_s`, now.
    """
    timed: list[tuple[float, Totals]] = []
    for bucket in doc.held:
        when = wall_s
        if (
            anchor is not None
            and bucket.last_monotonic_s is not None
            and bucket.host_boot_id is not None
            and bucket.host_boot_id == anchor.host_boot_id
        ):
            when = min(wall_s, anchor.project(bucket.last_monotonic_s))
        timed.append((when, bucket.totals))
    timed.sort(key=lambda item: item[0])
    doc = replace(doc, held=())
    for when, totals in timed:
        doc = _attribute(doc, when, totals, rules, now_wall_s)
    return doc


def _attribute(
    doc: MeterDoc, wall_s: float, totals: Totals, rules: MeterRules, now_wall_s: float
) -> MeterDoc:
    cycle = doc.cycle
    if cycle is None:
        start = rules.cycle_at(wall_s).start_wall_s
        cycle = CycleRecord(start_wall_s=start, samples=((wall_s, 0),))
        doc = replace(doc, cycle=cycle)
    elif wall_s >= rules.cycle_from(cycle.start_wall_s).end_wall_s:
        doc = _roll(evaluate(doc, rules, now_wall_s), wall_s, rules, now_wall_s)
        assert doc.cycle is not None
        cycle = doc.cycle
    # A time before the current cycle's start (a clock corrected backwards) stays in the
    # current cycle: cycles never go back.
    new_totals = cycle.totals + totals
    samples = cycle.samples
    if not samples or wall_s - samples[-1][0] >= rules.sample_every_s:
        horizon = wall_s - rules.projection_window_s - rules.sample_every_s
        kept = tuple(s for s in samples if s[0] >= horizon)
        samples = (*kept, (wall_s, new_totals.ip_bytes))
    return replace(doc, cycle=replace(cycle, totals=new_totals, samples=samples))


def _roll(doc: MeterDoc, wall_s: float, rules: MeterRules, now_wall_s: float) -> MeterDoc:
    assert doc.cycle is not None
    old = rules.cycle_from(doc.cycle.start_wall_s)
    new = rules.cycle_at(wall_s)
    summary = cycle_summary(doc.cycle, old, rules)
    doc = _emit(
        doc,
        EV_CYCLE,
        now_wall_s,
        {"previous": summary, "cycle_start": new.start_date, "cycle_end": new.end_date},
    )
    history = (*doc.history, summary)[-HISTORY_CYCLES:]
    record = CycleRecord(start_wall_s=new.start_wall_s, samples=((new.start_wall_s, 0),))
    return replace(doc, cycle=record, history=history)


def cycle_summary(record: CycleRecord, cycle: Cycle, rules: MeterRules) -> dict[str, Any]:
    used = budget.billed_bytes(record.totals.ip_bytes, rules.plan)
    return {
        "cycle_start": cycle.start_date,
        "cycle_end": cycle.end_date,
        "ip_bytes": record.totals.ip_bytes,
        "used_bytes": used,
        "cap_bytes": rules.plan.cap_bytes,
        "percent": round(budget.percent_used(used, rules.plan), 2),
        "overage_gb": budget.overage_gb_started(used, rules.plan),
        "overage_usd": budget.overage_usd(used, rules.plan),
        "lte_hours": round(record.totals.lte_s / 3600.0, 3),
        "lte_primary_healthy_hours": round(record.totals.lte_primary_healthy_s / 3600.0, 3),
        "blocked_bytes": record.totals.blocked_bytes,
        "voice_bytes": record.totals.voice_bytes or None,
        "agent_bytes": record.totals.agent_bytes or None,
        "agent_mqtt_bytes": record.totals.agent_mqtt_bytes or None,
        "resets": record.resets,
    }


def usage_bytes(doc: MeterDoc, rules: MeterRules) -> int:
    """Billed bytes this cycle, counting held bytes as this cycle's (they most likely are,
    and alerting early is the safe side)."""
    cycle_ip = doc.cycle.totals.ip_bytes if doc.cycle is not None else 0
    return budget.billed_bytes(cycle_ip + doc.held_totals.ip_bytes, rules.plan)


def evaluate(doc: MeterDoc, rules: MeterRules, now_wall_s: float) -> MeterDoc:
    """Raise the alerts and primary-use findings now due (each once per cycle)."""
    cycle = doc.cycle
    if cycle is None:
        # No cycle yet (the clock was never trusted): alerts wait for one to remember them.
        return doc
    used = usage_bytes(doc, rules)
    sent = set(cycle.alerts)
    new_keys: list[str] = []
    per_minute = budget.call_bytes_per_minute(rules.codec, rules.ptime_ms)
    common: dict[str, Any] = {
        "used_bytes": used,
        "cap_bytes": rules.plan.cap_bytes,
        "percent": round(budget.percent_used(used, rules.plan), 2),
        "overage_usd": budget.overage_usd(used, rules.plan),
        "minutes_left": round(budget.minutes_left(used, rules.plan, per_minute), 1),
        "telemetry_minimum": budget.telemetry_minimum(used, rules.plan),
    }
    common["cycle_start"] = rules.cycle_from(cycle.start_wall_s).start_date
    for alert in budget.due_alerts(used, rules.plan, sent):
        new_keys.append(alert.key)
        if alert.kind == "threshold":
            doc = _emit(doc, EV_THRESHOLD, now_wall_s, {"threshold_pct": alert.level, **common})
        else:
            doc = _emit(doc, EV_OVERAGE, now_wall_s, {"overage_gb": int(alert.level), **common})
    findings = budget.primary_use_findings(
        lte_s=cycle.totals.lte_s,
        lte_primary_healthy_s=cycle.totals.lte_primary_healthy_s,
        idle_ip_bytes=cycle.totals.idle_ip_bytes,
        cycle_elapsed_s=max(0.0, now_wall_s - cycle.start_wall_s),
        limits=rules.limits,
    )
    for finding in findings:
        key = f"use:{finding.key}"
        if key in sent:
            continue
        new_keys.append(key)
        doc = _emit(
            doc,
            EV_PRIMARY_USE,
            now_wall_s,
            {"finding": finding.key, "sentence": finding.sentence, **finding.figures},
        )
    if not new_keys:
        return doc
    return replace(doc, cycle=replace(cycle, alerts=(*cycle.alerts, *new_keys)))


def _emit(doc: MeterDoc, kind: str, wall_s: float, data: dict[str, Any]) -> MeterDoc:
    event = OutEvent(doc.next_event_id, kind, wall_s, {**data, "meter_event_id": doc.next_event_id})
    return replace(doc, outbox=(*doc.outbox, event), next_event_id=doc.next_event_id + 1)


def drop_reported(doc: MeterDoc, ids: set[int]) -> MeterDoc:
    """The document without the outbox events the store already holds."""
    if not ids:
        return doc
    return replace(doc, outbox=tuple(e for e in doc.outbox if e.id not in ids))


# --- the CLI's reset ------------------------------------------------------------------------


def reset(
    doc: MeterDoc, reason: str, wall_s: float, rules: MeterRules, *, by: str = "cli"
) -> MeterDoc:
    """Start the current cycle's count from zero (bytes held for an unknown time too),
    and record why, and who asked ("cli", "fleet"), in an event. The last raw reading
    stays: counting goes on from it."""
    before = usage_bytes(doc, rules)
    ip_before = (doc.cycle.totals.ip_bytes if doc.cycle else 0) + doc.held_totals.ip_bytes
    data: dict[str, Any] = {"reason": reason, "by": by, "used_bytes_before": before,
                            "ip_bytes_before": ip_before}
    cycle = doc.cycle
    if cycle is not None:
        data["cycle_start"] = rules.cycle_from(cycle.start_wall_s).start_date
        cycle = CycleRecord(
            start_wall_s=cycle.start_wall_s,
            samples=((wall_s, 0),),
            resets=cycle.resets + 1,
        )
    doc = replace(doc, cycle=cycle, held=())
    return _emit(doc, EV_RESET, wall_s, data)


def compact(counts: Sequence[Count], rules: MeterRules) -> list[Count]:
    """Fewer counts, same bytes: neighbours of the same kind and cycle folded into one.

    Bounds the memory the meter needs while the disk refuses writes (nothing counted is
    dropped; only the time resolution within a cycle is lost, which no figure uses).
    """
    out: list[Count] = []
    for count in counts:
        last = out[-1] if out else None
        if last is not None and _same_slot(last, count, rules):
            out[-1] = replace(
                count, totals=last.totals + count.totals, anchor=count.anchor or last.anchor
            )
        else:
            out.append(count)
    return out


def _same_slot(a: Count, b: Count, rules: MeterRules) -> bool:
    if (a.wall_s is None) != (b.wall_s is None):
        return False
    if a.wall_s is None or b.wall_s is None:
        return a.host_boot_id == b.host_boot_id
    return rules.cycle_at(a.wall_s).start_wall_s == rules.cycle_at(b.wall_s).start_wall_s
