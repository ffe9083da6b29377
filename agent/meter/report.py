"""The meter's snapshot, as `cpe-agent meter`, `cpe-agent status` and telemetry show it.
Pure: a document, the rules and a time in; a JSON-able dict (or text) out."""

from __future__ import annotations

from typing import Any

from agent.meter import budget
from agent.meter.ledger import MeterDoc, MeterRules, Totals, usage_bytes

#: A projection needs this much history; before it the rate means little.
MIN_PROJECTION_SPAN_S = 3600.0


def snapshot(
    doc: MeterDoc,
    rules: MeterRules,
    now_wall_s: float,
    *,
    clock_trusted: bool,
    clock_reason: str = "",
    voice_known: bool | None = None,
    agent_known: bool | None = None,
    mqtt_known: bool | None = None,
) -> dict[str, Any]:
    """`*_known`: whether the source can tell that part of the split (True: report it,
    even 0; False: None, unknown; None: known when the stored totals hold any)."""
    plan = rules.plan
    used = usage_bytes(doc, rules)
    per_minute = budget.call_bytes_per_minute(rules.codec, rules.ptime_ms)
    held = doc.held_totals
    record = doc.cycle
    totals = record.totals if record is not None else None
    if record is not None:
        cycle = rules.cycle_from(record.start_wall_s)
    elif clock_trusted:
        cycle = rules.cycle_at(now_wall_s)
    else:
        cycle = None
    out: dict[str, Any] = {
        "used_bytes": used,
        "ip_bytes": (totals.ip_bytes if totals else 0) + held.ip_bytes,
        "rx_ip_bytes": (totals.rx_ip_bytes if totals else 0) + held.rx_ip_bytes,
        "tx_ip_bytes": (totals.tx_ip_bytes if totals else 0) + held.tx_ip_bytes,
        "held_ip_bytes": held.ip_bytes,
        "safety_margin_pct": plan.safety_margin_pct,
        "cap_bytes": plan.cap_bytes,
        "gb_bytes": plan.gb_bytes,
        "percent": round(budget.percent_used(used, plan), 2),
        "overage_gb": budget.overage_gb_started(used, plan),
        "overage_usd": budget.overage_usd(used, plan),
        "overage_usd_per_gb": plan.overage_usd_per_gb,
        "codec": rules.codec,
        "call_bytes_per_minute": per_minute,
        "minutes_left": round(budget.minutes_left(used, plan, per_minute), 1),
        "telemetry_minimum": budget.telemetry_minimum(used, plan),
        "split": split_figures(
            totals, voice_known=voice_known, agent_known=agent_known, mqtt_known=mqtt_known
        ),
        "lte_hours": round((totals.lte_s if totals else 0.0) / 3600.0, 3),
        "lte_primary_healthy_hours": round(
            (totals.lte_primary_healthy_s if totals else 0.0) / 3600.0, 3
        ),
        "warnings": [],
        "clock": {"trusted": clock_trusted, "reason": clock_reason},
        "cycle": None,
        "projection": None,
        "resets": record.resets if record is not None else 0,
        "counter_source": doc.reading.source if doc.reading is not None else None,
        "history": list(doc.history),
    }
    if cycle is not None:
        out["cycle"] = {
            "start": cycle.iso(cycle.start_wall_s),
            "end": cycle.iso(cycle.end_wall_s),
            "start_wall_s": cycle.start_wall_s,
            "end_wall_s": cycle.end_wall_s,
            "timezone": cycle.timezone,
        }
    if record is not None and cycle is not None and clock_trusted:
        samples = [(w, budget.billed_bytes(b, plan)) for w, b in record.samples]
        proj = budget.projection(
            used, now_wall_s, cycle.start_wall_s, cycle.end_wall_s, samples,
            rules.projection_window_s, plan,
        )
        if proj.window_s >= MIN_PROJECTION_SPAN_S:
            out["projection"] = {
                "end_bytes": proj.end_bytes,
                "end_percent": round(proj.end_percent, 2),
                "end_overage_usd": proj.end_overage_usd,
                "rate_bytes_per_day": round(proj.rate_bytes_per_s * 86400.0),
                "window_hours": round(proj.window_s / 3600.0, 1),
            }
        findings = budget.primary_use_findings(
            lte_s=record.totals.lte_s,
            lte_primary_healthy_s=record.totals.lte_primary_healthy_s,
            idle_ip_bytes=record.totals.idle_ip_bytes,
            cycle_elapsed_s=max(0.0, now_wall_s - cycle.start_wall_s),
            limits=rules.limits,
        )
        out["warnings"] = [f.sentence for f in findings]
    if not clock_trusted:
        out["warnings"].append(
            f"The clock is not trusted yet ({clock_reason}); {held.ip_bytes} bytes are "
            "held and will be given to their cycle once it is."
        )
    return out


def split_figures(
    totals: Totals | None,
    *,
    voice_known: bool | None = None,
    agent_known: bool | None = None,
    mqtt_known: bool | None = None,
) -> dict[str, Any]:
    """This cycle's LTE bytes by kind. None means unknown, never 0: a driver that cannot
    tell VoIP from the agent's traffic (RouterOS today) leaves them None. `other_bytes`
    is what neither VoIP nor the agent explains (None unless both are known)."""
    t = totals or Totals()

    def known(value: int, flag: bool | None) -> int | None:
        if flag is None:
            flag = value > 0
        return value if flag else None

    voice = known(t.voice_bytes, voice_known)
    agent = known(t.agent_bytes, agent_known)
    other = None
    if voice is not None and agent is not None:
        other = max(0, t.ip_bytes - voice - agent)
    return {
        "voice_bytes": voice,
        "agent_bytes": agent,
        "agent_mqtt_bytes": known(t.agent_mqtt_bytes, mqtt_known),
        "other_bytes": other,
        "blocked_bytes": t.blocked_bytes,
        "idle_ip_bytes": t.idle_ip_bytes,
    }


def telemetry_figures(snap: dict[str, Any]) -> dict[str, Any]:
    """The few figures the fleet needs every report (the rest travels in events)."""
    proj = snap.get("projection") or {}
    cycle = snap.get("cycle") or {}
    split = snap.get("split") or {}
    return {
        "used_bytes": snap["used_bytes"],
        "cap_bytes": snap["cap_bytes"],
        "percent": snap["percent"],
        "overage_usd": snap["overage_usd"],
        "projected_bytes": proj.get("end_bytes"),
        "projected_overage_usd": proj.get("end_overage_usd"),
        "minutes_left": snap["minutes_left"],
        "lte_hours": snap["lte_hours"],
        "cycle_start": cycle.get("start"),
        "clock_trusted": snap["clock"]["trusted"],
        "voice_bytes": split.get("voice_bytes"),
        "agent_bytes": split.get("agent_bytes"),
        "agent_mqtt_bytes": split.get("agent_mqtt_bytes"),
        "blocked_bytes": split.get("blocked_bytes"),
    }


def render(snap: dict[str, Any]) -> str:
    """The snapshot as a person reads it."""
    gb = snap["gb_bytes"]
    lines = []
    cycle = snap.get("cycle")
    if cycle:
        lines.append(f"Cycle     {cycle['start']} to {cycle['end']} ({cycle['timezone']})")
    else:
        lines.append("Cycle     not started (no trusted time yet)")
    lines.append(
        f"Used      {snap['used_bytes'] / gb:.3f} GB of {snap['cap_bytes'] / gb:g} GB "
        f"({snap['percent']:.1f} %), incl. {snap['safety_margin_pct']:g} % margin"
    )
    over = f"${snap['overage_usd']:.2f}"
    if snap["overage_gb"]:
        over += f" ({snap['overage_gb']} GB started at ${snap['overage_usd_per_gb']:g})"
    lines.append(f"Overage   {over} so far")
    proj = snap.get("projection")
    if proj:
        lines.append(
            f"Projected {proj['end_bytes'] / gb:.3f} GB by the cycle's end "
            f"({proj['end_percent']:.0f} %), overage ${proj['end_overage_usd']:.2f}; "
            f"rate {proj['rate_bytes_per_day'] / 1e6:.1f} MB/day over {proj['window_hours']:g} h"
        )
    else:
        lines.append("Projected not enough history yet")
    lines.append(
        f"Talk      {snap['minutes_left']:.0f} call-minutes left before the cap "
        f"({snap['codec'].upper()}, {snap['call_bytes_per_minute'] / 1e6:.2f} MB per minute)"
    )
    lines.append(
        f"LTE       {snap['lte_hours']:.1f} h this cycle; "
        f"{snap['lte_primary_healthy_hours']:.2f} h while the primary was healthy"
    )
    split = snap["split"]
    lines.append(f"Split     {_split_text(split)}")
    lines.append(
        f"Blocked   {split['blocked_bytes']} non-VoIP bytes stopped before LTE; "
        f"{split['idle_ip_bytes']} bytes while VoIP was on the primary"
    )
    if snap.get("telemetry_minimum"):
        lines.append("At cap    the agent's own telemetry is cut to the minimum; calls go on")
    for warning in snap.get("warnings", []):
        lines.append(f"Warning   {warning}")
    return "\n".join(lines)


def _split_text(split: dict[str, Any]) -> str:
    def mb(value: int | None) -> str:
        return "unknown" if value is None else f"{value / 1e6:.2f} MB"

    text = f"voice {mb(split.get('voice_bytes'))}, agent {mb(split.get('agent_bytes'))}"
    if split.get("other_bytes") is not None:
        text += f", other {mb(split['other_bytes'])}"
    return text + f"; agent MQTT by its own count {mb(split.get('agent_mqtt_bytes'))}"
