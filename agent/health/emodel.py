"""The ITU-T G.107 E-model in its usual simplified form: network figures -> R -> MOS.

Why an E-model at all: loss, delay and jitter each matter for voice, but not
additively, and the failover decision ("is LTE better for calls than this poor
primary?") needs one comparable number per link. The E-model is the planning tool the
ITU and every VoIP monitor use for exactly that.

The simplified form (Cole & Rosenbluth 2001; G.107 with every non-network parameter at
its default) is

    R = 93.2 - Id(d) - Ie_eff(Ppl, codec)

* 93.2 is R0 - Is with G.107 defaults (R0 = 94.77, Is = 1.43, minus the default Id of
  0.15); the advantage factor A is 0 for wired and cellular alike (we do not reward
  LTE for mobility: the phones are on a desk).
* Id(d) = 0.024 d + 0.11 (d - 177.3) H(d - 177.3), d the one-way mouth-to-ear delay in
  ms (Cole & Rosenbluth's fit of G.107's Idd + Idte with default echo control).
* Ie_eff = Ie + (95 - Ie) * Ppl / (Ppl / BurstR + Bpl)  (G.107 §7.3), Ppl in percent,
  BurstR = 1 for random loss. Ie and Bpl come from G.113 Appendix I (Table I.3).

Codec choice for G.711: Bpl = 25.1, the G.113 value for G.711 *with* packet-loss
concealment (G.711 Appendix I). Every SIP desk phone and ATA we meet conceals lost
frames; Bpl = 4.3 (no PLC) is kept as "g711-noplc" for completeness. Reference point:
G.711, 150 ms, 1 % random loss gives R = 85.96 here. The often-quoted 86.4 is Cole &
Rosenbluth's own G.711 fit (base 94.2, Ie = 30 ln(1 + 15 e)), given by
`r_factor_cole_rosenbluth` for cross-checking; with base 93.2 only Bpl = 28.7 (not a
G.113 value) would reproduce it. The 0.44 R difference is 0.01 MOS. See docs/health.md.

Pure: no I/O, no clock, no logging.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

#: R with every G.107 parameter at its default and no network impairment.
R_DEFAULT = 93.2
#: Where Cole & Rosenbluth put the same point (their G.711 fit is built on it).
R_COLE_ROSENBLUTH = 94.2
#: Above this one-way delay (ms) the delay impairment steepens (G.107 / G.114 knee).
DELAY_KNEE_MS = 177.3


@dataclass(frozen=True)
class Codec:
    """What the E-model needs to know about a codec, and what it adds to the delay.

    `packetization_ms` is the audio one packet carries plus the encoder look-ahead: the
    sender must hold that much speech before the packet leaves.
    """

    name: str
    ie: float
    bpl: float
    packetization_ms: float


CODECS: dict[str, Codec] = {
    # 20 ms packets (the common ptime), with PLC (G.711 Appendix I): G.113 Table I.3.
    "g711": Codec("g711", ie=0.0, bpl=25.1, packetization_ms=20.0),
    # Same codec on a phone without concealment: G.113 Table I.3.
    "g711-noplc": Codec("g711-noplc", ie=0.0, bpl=4.3, packetization_ms=20.0),
    # G.729(A): 2 x 10 ms frames per packet + 5 ms look-ahead: G.113 Table I.3.
    "g729": Codec("g729", ie=11.0, bpl=19.0, packetization_ms=25.0),
}


def codec(name: str) -> Codec:
    """The codec's parameters; a clear error (listing the known names) otherwise."""
    try:
        return CODECS[name.lower()]
    except KeyError:
        known = ", ".join(sorted(CODECS))
        raise ValueError(f"unknown codec {name!r}: use one of {known}") from None


def delay_impairment(one_way_delay_ms: float) -> float:
    """Id: how much the mouth-to-ear delay costs, in R points."""
    d = max(0.0, one_way_delay_ms)
    impairment = 0.024 * d
    if d > DELAY_KNEE_MS:
        impairment += 0.11 * (d - DELAY_KNEE_MS)
    return impairment


def effective_equipment_impairment(
    codec_name: str, loss_pct: float, burst_ratio: float = 1.0
) -> float:
    """Ie_eff: the codec's own impairment plus what packet loss does to it."""
    c = codec(codec_name)
    if burst_ratio <= 0:
        raise ValueError("burst_ratio must be positive (1.0 for random loss)")
    ppl = min(100.0, max(0.0, loss_pct))
    return c.ie + (95.0 - c.ie) * ppl / (ppl / burst_ratio + c.bpl)


def r_factor(
    one_way_delay_ms: float,
    loss_pct: float,
    codec_name: str = "g711",
    burst_ratio: float = 1.0,
) -> float:
    """The transmission rating R (0..100) for one direction of a call."""
    r = (
        R_DEFAULT
        - delay_impairment(one_way_delay_ms)
        - effective_equipment_impairment(codec_name, loss_pct, burst_ratio)
    )
    return min(100.0, max(0.0, r))


def r_factor_cole_rosenbluth(one_way_delay_ms: float, loss_pct: float) -> float:
    """Cole & Rosenbluth's original G.711 formula; kept only to cross-check r_factor."""
    e = min(1.0, max(0.0, loss_pct / 100.0))
    r = R_COLE_ROSENBLUTH - delay_impairment(one_way_delay_ms) - 30.0 * math.log(1 + 15 * e)
    return min(100.0, max(0.0, r))


def mos_from_r(r: float) -> float:
    """G.107 Annex B: R -> estimated conversational MOS (1.0 .. 4.5)."""
    if r <= 0:
        return 1.0
    if r >= 100:
        return 4.5
    mos = 1.0 + 0.035 * r + r * (r - 60.0) * (100.0 - r) * 7e-6
    # The cubic dips just below 1 for R < 6.5; MOS has no meaning there.
    return max(1.0, mos)


def one_way_delay_ms(rtt_ms: float, jitter_ms: float, codec_name: str = "g711") -> float:
    """Mouth-to-ear delay estimated from what a ping can see.

    Half the round trip (paths assumed symmetric), plus a de-jitter buffer of twice the
    measured jitter (what an adaptive buffer settles to), plus the codec's packetization
    and look-ahead.
    """
    return max(0.0, rtt_ms) / 2.0 + 2.0 * max(0.0, jitter_ms) + codec(codec_name).packetization_ms


def one_way_loss_pct(round_trip_loss_pct: float) -> float:
    """The loss a voice stream sees in one direction, from the loss of round-trip probes.

    A ping must survive the path twice, a voice packet once: with independent loss p
    each way, probes are lost with 1 - (1 - p)^2, so p = 1 - sqrt(1 - lost). Feeding
    the round-trip figure to the E-model would count every lost packet twice (a link
    with 3 % loss each way looks like 6 %) and fail over from a line that is fine for
    calls (MOS 4.1 instead of 3.8 for G.711).
    """
    lost = min(100.0, max(0.0, round_trip_loss_pct)) / 100.0
    return 100.0 * (1.0 - (1.0 - lost) ** 0.5)


def voice_quality(
    rtt_ms: float, jitter_ms: float, loss_pct: float, codec_name: str = "g711"
) -> tuple[float, float]:
    """(R, MOS) for a call over a link with these ping figures (`loss_pct` round trip)."""
    delay_ms = one_way_delay_ms(rtt_ms, jitter_ms, codec_name)
    r = r_factor(delay_ms, one_way_loss_pct(loss_pct), codec_name)
    return r, mos_from_r(r)
