"""Figures from UDP echo (RFC 862) exchanges: voice quality and call capacity of a link.

The installer's test measures a link the way a call would use it: RTP-sized datagrams
marked EF, 50 a second, echoed by the provider (`agent.installer.echo` does the I/O).
This module turns what came back into the figures the report shows, so every rule here
is tested from tables.

Pure: no I/O, no clock, no logging. Times arrive as arguments, in seconds.

Byte counts include the IPv4 and UDP headers (28 B a datagram, `IP_UDP_HEADER_BYTES`):
that is what the LTE plan bills and what the router's counters show. Link-layer
overhead is not counted (it differs per link and the plan does not bill it).
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from agent.health.emodel import codec as _codec
from agent.health.emodel import voice_quality

#: IPv4 header (20 B, no options) + UDP header (8 B).
IP_UDP_HEADER_BYTES = 28
#: Arrival spreads shorter than this cannot be told apart from timer and scheduling
#: noise of a user-space receiver: the capacity is then only a lower bound.
DEFAULT_RESOLUTION_S = 0.001
#: From this many echoes on, the first quarter of the train is left out of the rate.
TAIL_MIN_PACKETS = 8
#: One G.711 call at 20 ms, one direction: 50 x (172 B RTP + 28 B IP/UDP) = 80 kbit/s,
#: plus link-layer framing: the usual planning figure.
DEFAULT_CALL_KBPS = 90.0


@dataclass(frozen=True)
class RoundTripFigures:
    """What `count` RTP-sized echoes say about a link for voice.

    `loss_pct` is round-trip loss, as measured; `mos` and `r_factor` are for one
    direction of a call (the E-model converts the loss, see `voice_quality`).
    `jitter_ms` is None with fewer than two replies (no difference to take); the
    E-model is then given 0. Everything timed is None when nothing came back.
    """

    sent: int
    received: int
    loss_pct: float
    #: Median round trip.
    rtt_ms: float | None
    #: 90th percentile round trip (nearest rank: a value that was actually measured).
    rtt_p90_ms: float | None
    #: Mean absolute difference of successive round trips (see `round_trip_figures`).
    jitter_ms: float | None
    mos: float | None
    r_factor: float | None
    #: IP bytes handed to the kernel and IP bytes that came back (ours and strays).
    bytes_sent: int
    bytes_received: int
    #: Datagrams that came back but were not a first, exact echo of ours (duplicates,
    #: foreign or mangled datagrams): counted in bytes_received, not in received.
    ignored: int = 0
    #: Why something went wrong ("no reply from 192.0.2.10:7", "Network is unreachable");
    #: None when every datagram was answered.
    detail: str | None = None


@dataclass(frozen=True)
class CapacityFigures:
    """How many calls a link can carry, from a packet train's dispersion.

    `rate_kbps` is the round trip's bottleneck rate (see `capacity_figures`); with
    `at_least` it is a lower bound, and so is `calls`. Both are None when fewer than
    two packets came back.
    """

    packets_sent: int
    packets_received: int
    #: IP size of one train packet (headers included).
    packet_bytes: int
    bytes_sent: int
    bytes_received: int
    rate_kbps: float | None
    calls: int | None
    at_least: bool
    call_kbps: float
    ignored: int = 0
    detail: str | None = None


def ip_bytes(payload_bytes: int) -> int:
    """A UDP datagram's size on the wire (IPv4, no options): payload + 28 B."""
    return payload_bytes + IP_UDP_HEADER_BYTES


def nearest_rank(values: Sequence[float], pct: float) -> float:
    """The nearest-rank percentile: the smallest value with at least pct % at or below it.

    Chosen over interpolation because the result is a round trip that happened, and
    because it is easy to check by hand from a sorted list.
    """
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100.0 * len(ordered)))
    return ordered[rank - 1]


def successive_difference_jitter_ms(rtts_ms: Sequence[float]) -> float | None:
    """Mean absolute difference of successive round trips (RTT IPDV, RFC 5481).

    Why not RFC 3550's smoothed interarrival jitter: it estimates the same mean |D|, but
    through a 1/16 filter that starts at 0 and weights the last ~16 differences, so a
    short run reads low (after the 10 echoes of a quick check it reaches 44 % of the
    true value, after 50 only 96 %) and one late burst dominates. The plain mean uses
    every difference equally. And the agent's health scoring reports this very
    statistic (`agent.health.scoring.WindowStats`), so the installer's figure for a link
    reads the same as `cpe-agent status` does. Lost datagrams are skipped, not bridged.
    """
    if len(rtts_ms) < 2:
        return None
    return statistics.fmean(abs(b - a) for a, b in itertools.pairwise(rtts_ms))


def round_trip_figures(
    sent: int,
    rtts_s: Sequence[float | None],
    datagram_bytes: int,
    codec: str,
    *,
    datagrams_sent: int | None = None,
    ignored: int = 0,
    ignored_bytes: int = 0,
    detail: str | None = None,
) -> RoundTripFigures:
    """Loss, RTT, jitter, R and MOS from one run of echoes.

    `rtts_s` holds one entry per sequence number in send order: the round trip in
    seconds, or None when that datagram was lost. `datagram_bytes` is the UDP payload of
    one datagram (172 for 20 ms of G.711 in RTP); 28 B of IP and UDP are added.
    `datagrams_sent` is how many reached the kernel (a send that failed cost nothing;
    default: all `sent`). `ignored` / `ignored_bytes` count stray datagrams that came
    back (IP bytes), which the link carried all the same.

    The MOS is the one the health monitor computes (`agent.health.emodel.voice_quality`
    from median RTT, jitter and round-trip loss, which it converts to one-way loss), so
    the installer's figure and `cpe-agent status` agree for the same link.
    """
    _codec(codec)  # a clear ValueError naming the known codecs
    if sent < 1:
        raise ValueError("sent must be at least 1")
    if len(rtts_s) != sent:
        raise ValueError(f"rtts_s holds {len(rtts_s)} entries for {sent} datagrams sent")
    if datagram_bytes < 0 or ignored < 0 or ignored_bytes < 0:
        raise ValueError("byte and datagram counts must not be negative")
    handed = sent if datagrams_sent is None else datagrams_sent
    if not 0 <= handed <= sent:
        raise ValueError("datagrams_sent must lie between 0 and sent")
    rtts_ms = [r * 1000.0 for r in rtts_s if r is not None]
    if any(not r >= 0.0 for r in rtts_ms):  # also rejects NaN
        raise ValueError("round-trip times must not be negative")
    received = len(rtts_ms)
    if received > handed:
        raise ValueError("more echoes than datagrams sent")
    loss_pct = 100.0 * (sent - received) / sent
    size = ip_bytes(datagram_bytes)
    rtt_ms = p90_ms = jitter_ms = r = mos = None
    if rtts_ms:
        rtt_ms = statistics.median(rtts_ms)
        p90_ms = nearest_rank(rtts_ms, 90.0)
        jitter_ms = successive_difference_jitter_ms(rtts_ms)
        r, mos = voice_quality(rtt_ms, jitter_ms or 0.0, loss_pct, codec)
    return RoundTripFigures(
        sent=sent,
        received=received,
        loss_pct=loss_pct,
        rtt_ms=rtt_ms,
        rtt_p90_ms=p90_ms,
        jitter_ms=jitter_ms,
        mos=mos,
        r_factor=r,
        bytes_sent=handed * size,
        bytes_received=received * size + ignored_bytes,
        ignored=ignored,
        detail=detail,
    )


def capacity_figures(
    packets_sent: int,
    arrivals_s: Sequence[float],
    packet_bytes: int,
    call_kbps: float = DEFAULT_CALL_KBPS,
    *,
    resolution_s: float = DEFAULT_RESOLUTION_S,
    send_span_s: float | None = None,
    datagrams_sent: int | None = None,
    ignored: int = 0,
    ignored_bytes: int = 0,
    detail: str | None = None,
) -> CapacityFigures:
    """The bottleneck rate and the number of calls it carries, from a packet train.

    Method (packet-pair / packet-train dispersion, Jacobson's "pathchar" idea as used by
    Dovrolis et al., "Packet-dispersion techniques and a capacity-estimation
    methodology", IEEE/ACM ToN 2004): `packets_sent` packets of `packet_bytes` (IP
    size) leave back to back; the slowest hop spreads them to its own serialisation
    time, and later, faster hops keep that spacing. Through an echo the train crosses
    the link twice, so the spread that comes back is set by the slower direction:

        rate = (received - 1) * packet_bytes * 8 / (last arrival - first arrival)

    which is roughly min(uplink, downlink) of the path, normally the access link (LTE's
    uplink). `calls` = floor(rate / call_kbps): a call needs `call_kbps` each way.

    Limits, each of which the report should be read with:

    * It measures capacity, not what is free: cross traffic in the train's gaps makes
      it read low, a burst allowance (a token-bucket policer, an LTE scheduler granting
      several packets in one subframe) makes it read high. Forty packets (48 kB) are
      past most LTE grant sizes but not past every shaper's burst.
    * Receiver timing: arrivals are user-space timestamps; a spread below
      `resolution_s` is not trusted and the rate is computed over `resolution_s`
      instead, as a lower bound (`at_least`). The same holds when the train came back
      no more spread than it left (`send_span_s`, the time the sender took): the
      sender, not the path, set the spacing.
    * Burst allowances: with `TAIL_MIN_PACKETS` or more echoes, the first quarter (by
      arrival) is left out, so a token bucket's burst does not inflate the rate.
    * Lost packets: the spread of those that arrived is used; a packet lost before the
      bottleneck shortens the train and does not bias the rate, one lost after it
      leaves a gap and biases it low.
    """
    if packets_sent < 1:
        raise ValueError("packets_sent must be at least 1")
    if packet_bytes < IP_UDP_HEADER_BYTES:
        raise ValueError(f"packet_bytes is the IP size: at least {IP_UDP_HEADER_BYTES}")
    if not call_kbps > 0 or not resolution_s > 0:
        raise ValueError("call_kbps and resolution_s must be positive")
    if ignored < 0 or ignored_bytes < 0:
        raise ValueError("ignored counts must not be negative")
    handed = packets_sent if datagrams_sent is None else datagrams_sent
    if not 0 <= handed <= packets_sent:
        raise ValueError("datagrams_sent must lie between 0 and packets_sent")
    received = len(arrivals_s)
    if received > handed:
        raise ValueError("more packets received than sent")
    rate_kbps: float | None = None
    calls: int | None = None
    at_least = False
    timed = sorted(arrivals_s)
    if received >= TAIL_MIN_PACKETS:
        # Skip the train's head: a shaper's burst allowance (a token bucket, an LTE
        # grant) lets it through at line rate; the tail is paced by the bottleneck.
        timed = timed[received // 4 :]
    if len(timed) >= 2:
        spread_s = timed[-1] - timed[0]
        floor_s = resolution_s
        if send_span_s is not None:
            floor_s = max(floor_s, send_span_s + resolution_s)
        if spread_s < floor_s:
            at_least = True
            spread_s = max(spread_s, resolution_s)
        rate_kbps = (len(timed) - 1) * packet_bytes * 8 / spread_s / 1000.0
        calls = math.floor(rate_kbps / call_kbps)
    return CapacityFigures(
        packets_sent=packets_sent,
        packets_received=received,
        packet_bytes=packet_bytes,
        bytes_sent=handed * packet_bytes,
        bytes_received=received * packet_bytes + ignored_bytes,
        rate_kbps=rate_kbps,
        calls=calls,
        at_least=at_least,
        call_kbps=call_kbps,
        ignored=ignored,
        detail=detail,
    )
