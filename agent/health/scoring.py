"""Probe samples -> a verdict per link: up, degraded, down or unknown.

Pure: it takes the samples and the time as arguments, does no I/O, reads no clock and
does not log, so every rule here is tested from tables and by seeded simulation.

The down rule, and why (numbers in docs/health.md):

* A *target* is dead when it has been silent (no answer arrived) for at least
  `down_after_s` AND at least `down_after_probes` probes sent to it since its last
  answer went unanswered (timed out, or still out after `late_after_s`). The second
  half is what keeps a stalled scheduler or a sparsely probed link from looking dead:
  silence with nothing asked is not evidence.
* A *link* is down when fewer than `min_targets_up` (k) ICMP targets are alive and too
  many are dead for k to be reached: losing one of two data centres is not an outage.
* With `sip_required`, a link whose SIP OPTIONS go unanswered by every SBC is down for
  voice, however well it pings.
* Carrier down (netlink) is down at once.

Quality (degraded) is judged only from targets that are alive, so a dead data centre
does not read as 33 % loss; and only once the window holds `min_quality_samples`.
"""

from __future__ import annotations

import bisect
import enum
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from agent.health.emodel import codec as _codec
from agent.health.emodel import one_way_loss_pct, voice_quality
from drivers.types import ProbeResult

#: (sent_at_s, result): when the probe left (monotonic seconds) and how it ended.
Sample = tuple[float, ProbeResult]
#: (sent_at_s, target): an ICMP probe neither answered nor timed out yet.
InFlight = tuple[float, str]


class Verdict(enum.StrEnum):
    """How fit a link is for voice right now."""

    UP = "up"
    DEGRADED = "degraded"
    DOWN = "down"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class HealthPolicy:
    """The thresholds of one link's verdict. Defaults match `[health]` in the config."""

    #: Quality statistics (loss, RTT, jitter, MOS) look back this far.
    window_s: float = 10.0
    #: A target silent this long (and see down_after_probes) is dead.
    down_after_s: float = 1.0
    #: ... and only if at least this many probes to it went unanswered meanwhile.
    down_after_probes: int = 3
    #: A probe still out after this long counts as unanswered for the down rule.
    late_after_s: float = 0.2
    #: k of n: the link is up while at least k ICMP targets are alive.
    min_targets_up: int = 1
    #: One-way loss (estimated from round-trip probes) above which voice suffers.
    degraded_loss_pct: float = 5.0
    degraded_rtt_ms: float = 300.0
    degraded_jitter_ms: float = 40.0
    degraded_mos: float = 3.6
    #: Fewer samples than this in the window: quality is not judged yet (too noisy).
    min_quality_samples: int = 10
    codec: str = "g711"
    #: SIP OPTIONS unanswered by every SBC -> down for voice.
    sip_required: bool = True

    def __post_init__(self) -> None:
        _codec(self.codec)  # raises ValueError naming the known codecs
        for name in ("window_s", "down_after_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if self.late_after_s < 0:
            raise ValueError("late_after_s must not be negative")
        if self.down_after_probes < 1 or self.min_targets_up < 1:
            raise ValueError("down_after_probes and min_targets_up must be at least 1")


@dataclass(frozen=True)
class WindowStats:
    """Loss, RTT and jitter over the window, for one target (or pooled: target None).

    Jitter is the mean absolute difference of consecutive RTTs (RTT IPDV, RFC 5481),
    unsmoothed: RFC 3550's 1/16 filter would make the number depend on history before
    the window. Lost probes are skipped, not bridged with a guess.
    """

    target: str | None
    sent: int
    answered: int
    loss_pct: float | None
    rtt_median_ms: float | None
    rtt_mean_ms: float | None
    jitter_ms: float | None


@dataclass(frozen=True)
class LinkAssessment:
    verdict: Verdict
    #: One sentence a person can act on ("no answer from 2 of 2 targets for 1.2 s").
    reason: str
    targets_up: int
    targets_total: int
    loss_pct: float | None = None
    rtt_ms: float | None = None
    jitter_ms: float | None = None
    mos: float | None = None
    r_factor: float | None = None
    #: SBCs whose OPTIONS are answered; None when no SIP result is in yet.
    sip_targets_up: int | None = None
    sip_targets_total: int = 0
    #: Seconds since any ICMP target last answered; None if none has.
    silent_s: float | None = None
    carrier_up: bool | None = None
    samples: int = 0
    per_target: tuple[WindowStats, ...] = ()


@dataclass(frozen=True)
class _Reach:
    """Whether one target is alive, dead or not yet known, with the evidence."""

    target: str
    state: str  # "alive" | "dead" | "unknown"
    silent_s: float | None
    unanswered: int
    heard: bool = False
    last_status: int | None = None


# -- statistics --------------------------------------------------------------------


def _group(samples: Iterable[Sample]) -> dict[str, dict[str, list[Sample]]]:
    """method -> target -> samples sorted by send time, in one pass."""
    grouped: dict[str, dict[str, list[Sample]]] = {}
    for sample in samples:
        result = sample[1]
        grouped.setdefault(result.method, {}).setdefault(result.target, []).append(sample)
    for by_target in grouped.values():
        for seq in by_target.values():
            seq.sort(key=_sent_at)
    return grouped


def _sent_at(sample: Sample) -> float:
    return sample[0]


def _window(seq: list[Sample], now_s: float, window_s: float) -> list[Sample]:
    """The part of a sorted series sent in [now - window, now]."""
    lo = bisect.bisect_left(seq, now_s - window_s, key=_sent_at)
    hi = bisect.bisect_right(seq, now_s, key=_sent_at)
    return seq[lo:hi]


def _stats(target: str | None, series: Iterable[Sequence[Sample]]) -> WindowStats:
    """Stats over one or more per-target series (each sorted by send time)."""
    sent = answered = 0
    rtts: list[float] = []
    diffs: list[float] = []
    for seq in series:
        previous: float | None = None
        for _, r in seq:
            sent += 1
            if not r.answered:
                continue
            answered += 1
            if r.rtt_s is None:
                continue
            rtt_ms = r.rtt_s * 1000.0
            rtts.append(rtt_ms)
            if previous is not None:
                diffs.append(abs(rtt_ms - previous))
            previous = rtt_ms
    return WindowStats(
        target=target,
        sent=sent,
        answered=answered,
        loss_pct=100.0 * (sent - answered) / sent if sent else None,
        rtt_median_ms=statistics.median(rtts) if rtts else None,
        rtt_mean_ms=statistics.fmean(rtts) if rtts else None,
        jitter_ms=statistics.fmean(diffs) if diffs else (0.0 if rtts else None),
    )


def target_stats(
    samples: Iterable[Sample], now_s: float, window_s: float, method: str = "icmp"
) -> dict[str, WindowStats]:
    """Per-target stats over the samples sent in [now - window, now]."""
    grouped = _group(samples).get(method, {})
    return {t: _stats(t, [_window(seq, now_s, window_s)]) for t, seq in sorted(grouped.items())}


def pooled_stats(
    samples: Iterable[Sample],
    now_s: float,
    window_s: float,
    method: str = "icmp",
    targets: Iterable[str] | None = None,
) -> WindowStats:
    """Stats pooled over targets (all, or those named); jitter never spans two targets."""
    grouped = _group(samples).get(method, {})
    keep = set(grouped) if targets is None else set(targets)
    return _stats(
        None, [_window(seq, now_s, window_s) for t, seq in sorted(grouped.items()) if t in keep]
    )


# -- reachability ------------------------------------------------------------------


def _reach(
    target: str,
    seq: Sequence[Sample],
    in_flight: Sequence[float],
    now_s: float,
    policy: HealthPolicy,
) -> _Reach:
    answered = [(s, r) for s, r in seq if r.answered]
    last_status = seq[-1][1].sip_status if seq else None
    if answered:
        last_sent, last = max(answered, key=lambda a: a[0] + (a[1].rtt_s or 0.0))
        silence_from: float | None = last_sent + (last.rtt_s or 0.0)
    else:
        last_sent, silence_from = float("-inf"), None
    unanswered = [s for s, r in seq if not r.answered and s > last_sent]
    unanswered += [s for s in in_flight if s > last_sent and now_s - s >= policy.late_after_s]
    if silence_from is None and unanswered:
        silence_from = min(unanswered)
    silent_s = None if silence_from is None else max(0.0, now_s - silence_from)
    dead = (
        len(unanswered) >= policy.down_after_probes
        and silent_s is not None
        and silent_s >= policy.down_after_s
    )
    state = "dead" if dead else ("alive" if answered else "unknown")
    return _Reach(target, state, silent_s, len(unanswered), bool(answered), last_status)


def _reach_all(
    grouped: dict[str, list[Sample]],
    in_flight: Iterable[InFlight],
    now_s: float,
    policy: HealthPolicy,
) -> list[_Reach]:
    flying: dict[str, list[float]] = {}
    for sent_at, target in in_flight:
        flying.setdefault(target, []).append(sent_at)
    names = sorted(set(grouped) | set(flying))
    return [_reach(t, grouped.get(t, []), flying.get(t, []), now_s, policy) for t in names]


# -- the verdict -------------------------------------------------------------------


def _fmt(value: float | None, unit: str, digits: int = 0) -> str:
    return "n/a" if value is None else f"{value:.{digits}f} {unit}"


def _quality_problems(stats: WindowStats, mos: float | None, policy: HealthPolicy) -> list[str]:
    problems = []
    one_way = None if stats.loss_pct is None else one_way_loss_pct(stats.loss_pct)
    if one_way is not None and one_way > policy.degraded_loss_pct:
        problems.append(f"loss {one_way:.1f} % each way > {policy.degraded_loss_pct:g} %")
    if stats.rtt_median_ms is not None and stats.rtt_median_ms > policy.degraded_rtt_ms:
        problems.append(f"RTT {stats.rtt_median_ms:.0f} ms > {policy.degraded_rtt_ms:g} ms")
    if stats.jitter_ms is not None and stats.jitter_ms > policy.degraded_jitter_ms:
        problems.append(f"jitter {stats.jitter_ms:.0f} ms > {policy.degraded_jitter_ms:g} ms")
    if mos is not None and mos < policy.degraded_mos:
        problems.append(f"MOS {mos:.2f} < {policy.degraded_mos:g}")
    return problems


def assess_link(
    samples: Iterable[Sample],
    now_s: float,
    policy: HealthPolicy,
    carrier_up: bool | None,
    in_flight: Iterable[InFlight] = (),
) -> LinkAssessment:
    """The link's verdict from its probe samples at `now_s` (monotonic seconds).

    `samples` may hold more than the window (the down rule looks back to each target's
    last answer); `in_flight` lists ICMP probes still out, so that a blackhole is seen
    before the probes' own timeouts expire.
    """
    grouped = _group(samples)
    icmp = _reach_all(grouped.get("icmp", {}), in_flight, now_s, policy)
    sip = _reach_all(grouped.get("sip", {}), (), now_s, policy)
    alive = [t.target for t in icmp if t.state == "alive"]
    windowed = {
        t: _window(seq, now_s, policy.window_s)
        for t, seq in sorted(grouped.get("icmp", {}).items())
    }
    per_target = tuple(_stats(t, [seq]) for t, seq in windowed.items())
    keep = set(alive) if alive else set(windowed)
    pooled = _stats(None, [seq for t, seq in windowed.items() if t in keep])
    r = mos = None
    if pooled.rtt_median_ms is not None and pooled.loss_pct is not None:
        r, mos = voice_quality(
            pooled.rtt_median_ms, pooled.jitter_ms or 0.0, pooled.loss_pct, policy.codec
        )
    silences = [t.silent_s for t in icmp if t.heard and t.silent_s is not None]
    sip_alive = sum(t.state == "alive" for t in sip)
    sip_known = any(t.state != "unknown" for t in sip)

    def verdict(v: Verdict, reason: str) -> LinkAssessment:
        return LinkAssessment(
            verdict=v,
            reason=reason,
            targets_up=len(alive),
            targets_total=len(icmp),
            loss_pct=pooled.loss_pct,
            rtt_ms=pooled.rtt_median_ms,
            jitter_ms=pooled.jitter_ms,
            mos=mos,
            r_factor=r,
            sip_targets_up=sip_alive if sip_known else None,
            sip_targets_total=len(sip),
            silent_s=min(silences) if silences else None,
            carrier_up=carrier_up,
            samples=pooled.sent,
            per_target=per_target,
        )

    if carrier_up is False:
        return verdict(Verdict.DOWN, "carrier lost on the link (cable, modem or port down)")
    if not icmp and not sip:
        return verdict(Verdict.UNKNOWN, "no probe results yet")

    n = len(icmp)
    k = min(policy.min_targets_up, n)
    if n and len(alive) < k:
        dead = [t for t in icmp if t.state == "dead"]
        if len(dead) > n - k:
            quiet = min(t.silent_s or 0.0 for t in dead)
            probes = sum(t.unanswered for t in dead)
            return verdict(
                Verdict.DOWN,
                f"{len(alive)} of {n} ping targets answer (need {k}): no answer for "
                f"{quiet:.1f} s, {probes} probes unanswered",
            )
        return verdict(Verdict.UNKNOWN, f"waiting for answers: {len(alive)} of {n} targets so far")

    if policy.sip_required and sip and sip_alive == 0:
        if all(t.state == "dead" for t in sip):
            quiet = min(t.silent_s or 0.0 for t in sip)
            return verdict(
                Verdict.DOWN,
                f"no SBC answers SIP OPTIONS ({len(sip)} tried, silent {quiet:.0f} s)"
                + (" though pings pass: the ISP may be blocking SIP" if alive else ""),
            )
        if not n:
            return verdict(Verdict.UNKNOWN, "waiting for SIP answers")
    if not n:
        return verdict(Verdict.UP, f"{sip_alive} of {len(sip)} SBCs answer SIP OPTIONS")

    summary = (
        f"{len(alive)} of {n} targets answer; loss {_fmt(pooled.loss_pct, '%', 1)}, "
        f"RTT {_fmt(pooled.rtt_median_ms, 'ms')}, jitter {_fmt(pooled.jitter_ms, 'ms')}, "
        f"MOS {_fmt(mos, '', 2).strip()}"
    )
    sip_5xx = [t for t in sip if t.last_status is not None and t.last_status >= 500]
    if sip and sip_5xx and len(sip_5xx) == len(sip):
        summary += "; every SBC answers 5xx (provider side, not this link)"
    if pooled.sent < policy.min_quality_samples:
        return verdict(Verdict.UP, f"{summary} (quality not judged: {pooled.sent} samples)")
    problems = _quality_problems(pooled, mos, policy)
    if problems:
        return verdict(Verdict.DEGRADED, f"poor for voice: {', '.join(problems)} ({summary})")
    return verdict(Verdict.UP, summary)


def cellular_better_for_voice(
    primary: LinkAssessment, cellular: LinkAssessment, margin_mos: float = 0.5
) -> bool:
    """Would calls be better on LTE? Only on evidence: a working cellular link with a MOS,
    and either a dead primary or a primary MOS lower by at least `margin_mos`.
    """
    if cellular.verdict not in (Verdict.UP, Verdict.DEGRADED) or cellular.mos is None:
        return False
    if primary.verdict is Verdict.DOWN:
        return True
    if primary.mos is None:
        return False
    return cellular.mos >= primary.mos + margin_mos
