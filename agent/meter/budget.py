"""Plan arithmetic: thresholds, overage, projection, talk minutes, primary use. Pure.

Units: bytes are IP bytes as the carrier bills them; "GB" is `gb_bytes` (10^9 by
default: carriers bill decimal gigabytes); money is US dollars.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

DECIMAL_GB_BYTES = 1_000_000_000

#: IPv4 (20) + UDP (8) + RTP (12) header bytes carried by every voice packet.
IP_UDP_RTP_HEADER_BYTES = 40
#: Codec payload rate in bytes per second (G.711: 64 kbit/s; G.729: 8 kbit/s).
CODEC_PAYLOAD_BYTES_PER_S = {"g711": 8000, "g729": 1000}


@dataclass(frozen=True)
class Plan:
    cap_bytes: int
    gb_bytes: int = DECIMAL_GB_BYTES
    overage_usd_per_gb: float = 15.0
    thresholds_pct: tuple[float, ...] = (50.0, 75.0, 90.0, 100.0)
    #: Added to the measured bytes before any comparison with the cap: the carrier's
    #: count can exceed ours (downlink packets it forwarded that the radio lost).
    safety_margin_pct: float = 0.0
    #: At or above this share of the cap the agent cuts its own telemetry to the minimum.
    telemetry_minimum_at_pct: float = 100.0


def billed_bytes(ip_bytes: int, plan: Plan) -> int:
    """The bytes to hold against the cap: measured IP bytes plus the safety margin."""
    return math.ceil(ip_bytes * (1.0 + plan.safety_margin_pct / 100.0))


def percent_used(used_bytes: int, plan: Plan) -> float:
    return 100.0 * used_bytes / plan.cap_bytes


def overage_gb_started(used_bytes: int, plan: Plan) -> int:
    """Overage GBs begun: every extra GB, or part of one, is billed."""
    over = used_bytes - plan.cap_bytes
    return 0 if over <= 0 else -(-over // plan.gb_bytes)


def overage_usd(used_bytes: int, plan: Plan) -> float:
    return round(overage_gb_started(used_bytes, plan) * plan.overage_usd_per_gb, 2)


# --- alerts ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Alert:
    #: Stable key, remembered per cycle so an alert is raised once: "pct:75", "overage:2".
    key: str
    kind: str  # "threshold" or "overage"
    #: The threshold's percent, or the overage GB's number.
    level: float


def due_alerts(used_bytes: int, plan: Plan, already: Iterable[str]) -> list[Alert]:
    """Thresholds reached and overage GBs begun that were not yet announced, lowest first.

    A jump past several at once (a long outage metered after a restart) announces each.
    """
    sent = set(already)
    due: list[Alert] = []
    pct = percent_used(used_bytes, plan)
    for threshold in sorted(plan.thresholds_pct):
        key = f"pct:{threshold:g}"
        if pct >= threshold and key not in sent:
            due.append(Alert(key, "threshold", threshold))
    for number in range(1, overage_gb_started(used_bytes, plan) + 1):
        key = f"overage:{number}"
        if key not in sent:
            due.append(Alert(key, "overage", float(number)))
    return due


def telemetry_minimum(used_bytes: int, plan: Plan) -> bool:
    """At the cap the agent's own reporting shrinks to the minimum. Voice never stops."""
    return percent_used(used_bytes, plan) >= plan.telemetry_minimum_at_pct


# --- projection ------------------------------------------------------------------------


@dataclass(frozen=True)
class Projection:
    rate_bytes_per_s: float
    #: Bytes expected by the cycle's end at the recent rate (billed bytes, margin included).
    end_bytes: int
    end_overage_usd: float
    end_percent: float
    #: Seconds of history the rate was taken over.
    window_s: float


def projection(
    used_bytes: int,
    now_wall_s: float,
    cycle_start_wall_s: float,
    cycle_end_wall_s: float,
    samples: Sequence[tuple[float, int]],
    window_s: float,
    plan: Plan,
) -> Projection:
    """Month-end usage from the recent rate.

    `samples` are (wall_s, billed bytes so far in the cycle), oldest first. The rate is
    taken from the newest sample at least `window_s` old (or the cycle's start, 0 bytes,
    when the cycle is younger than the window) to now: a failover last week weighs
    more than a quiet month's average would give it, and a day-long outage yesterday
    does not dominate as a one-hour rate would.
    """
    base_wall_s, base_bytes = cycle_start_wall_s, 0
    for wall_s, bytes_so_far in samples:
        if wall_s <= now_wall_s - window_s and wall_s >= base_wall_s:
            base_wall_s, base_bytes = wall_s, bytes_so_far
    span_s = now_wall_s - base_wall_s
    rate = max(0.0, (used_bytes - base_bytes) / span_s) if span_s > 0 else 0.0
    remaining_s = max(0.0, cycle_end_wall_s - now_wall_s)
    end = used_bytes + math.ceil(rate * remaining_s)
    return Projection(
        rate_bytes_per_s=rate,
        end_bytes=end,
        end_overage_usd=overage_usd(end, plan),
        end_percent=percent_used(end, plan),
        window_s=span_s,
    )


# --- talk minutes ----------------------------------------------------------------------


def call_bytes_per_minute(codec: str, ptime_ms: float = 20.0) -> int:
    """IP bytes one call-minute costs, both directions, from the packet sizes.

    A packet carries `ptime_ms` of audio plus 40 bytes of IPv4/UDP/RTP headers, and
    `1000 / ptime_ms` packets go each way per second:
      G.711 at 20 ms: (160 + 40) B x 50/s x 60 s x 2 = 1,200,000 B (the provider's 1.2 MB)
      G.729 at 20 ms: ( 20 + 40) B x 50/s x 60 s x 2 =   360,000 B
    RTCP (one ~100 B report per 5 s each way, 0.2 %) and SIP signalling are left out.
    """
    try:
        payload_rate = CODEC_PAYLOAD_BYTES_PER_S[codec]
    except KeyError as exc:
        known = ", ".join(sorted(CODEC_PAYLOAD_BYTES_PER_S))
        raise ValueError(f"unknown codec {codec!r}; the known codecs are {known}") from exc
    packets_per_s = 1000.0 / ptime_ms
    payload_bytes = payload_rate * ptime_ms / 1000.0
    return round((payload_bytes + IP_UDP_RTP_HEADER_BYTES) * packets_per_s * 60 * 2)


def minutes_left(used_bytes: int, plan: Plan, bytes_per_minute: int) -> float:
    """Call-minutes before the cap (0 at or over it; calls go on, as overage)."""
    return max(0, plan.cap_bytes - used_bytes) / bytes_per_minute


# --- backup used as primary ------------------------------------------------------------


@dataclass(frozen=True)
class PrimaryUseLimits:
    #: VoIP on LTE while the primary is healthy (outside the failback dwell and the
    #: installer's test) must not happen; beyond this per cycle it is reported.
    lte_primary_healthy_s: float = 300.0
    #: LTE bytes while VoIP is on the primary: only the agent's sparse probes belong
    #: there (about 5 MB a month).
    idle_bytes: int = 50_000_000
    #: VoIP on LTE for more than this share of the cycle so far looks like primary use.
    lte_share_pct: float = 25.0
    #: ... judged only once the cycle is this old (a first-day outage is not a pattern).
    lte_share_min_elapsed_s: float = 3 * 86400.0


@dataclass(frozen=True)
class Finding:
    key: str  # "primary_healthy", "idle_bytes", "lte_share": raised once per cycle
    sentence: str
    figures: dict[str, float] = field(default_factory=dict)


def primary_use_findings(
    *,
    lte_s: float,
    lte_primary_healthy_s: float,
    idle_ip_bytes: int,
    cycle_elapsed_s: float,
    limits: PrimaryUseLimits,
) -> list[Finding]:
    """Signs that the backup is being used as the primary internet access."""
    found: list[Finding] = []
    if lte_primary_healthy_s > limits.lte_primary_healthy_s:
        found.append(
            Finding(
                "primary_healthy",
                f"VoIP used LTE for {lte_primary_healthy_s / 60:.0f} min this cycle while "
                "the primary was healthy; check the router's failover rules.",
                {"lte_primary_healthy_s": round(lte_primary_healthy_s, 1)},
            )
        )
    if idle_ip_bytes > limits.idle_bytes:
        found.append(
            Finding(
                "idle_bytes",
                f"{idle_ip_bytes / 1e6:.0f} MB crossed LTE this cycle while VoIP was on the "
                "primary; something other than VoIP is using the backup.",
                {"idle_ip_bytes": idle_ip_bytes},
            )
        )
    if cycle_elapsed_s >= limits.lte_share_min_elapsed_s > 0:
        share = 100.0 * lte_s / cycle_elapsed_s
        if share > limits.lte_share_pct:
            found.append(
                Finding(
                    "lte_share",
                    f"VoIP was on LTE {share:.0f} % of this cycle; the pattern looks like "
                    "primary use, which the carrier may suspend or bill.",
                    {"lte_s": round(lte_s, 1), "share_pct": round(share, 1)},
                )
            )
    return found
