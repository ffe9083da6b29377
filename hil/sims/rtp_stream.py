"""The phone's voice stream and the SBC's media sink, for measuring the voice-path outage.

`send` (in the phone's namespace) sends what a G.711 call at 20 ms ptime sends: 50
packets a second of 172 bytes of UDP payload (a 12-byte RTP header with sequence
number and timestamp, then 160 bytes of PCMU), from local port 16384 to the SBC.
`sink` (in the SBC's namespace) records every packet's arrival: CLOCK_MONOTONIC time
(one clock for every namespace on the host, so a benchmark can compare it with its
own), the source address as the SBC sees it after the site's NAT, and the RTP seq.
`voice_path_gaps` (pure) turns the arrivals into the figure the failover benchmark
reports: how long the SBC heard nothing between the last packet via the primary
(source 198.51.100.2) and the first via LTE (source 192.0.2.6, the carrier's CGNAT).

    python -m hil.sims.rtp_stream send [--to 203.0.113.10:16384] [--local-port 16384]
        [--duration S | --count N] [--dscp-ef]
    python -m hil.sims.rtp_stream sink [--bind 203.0.113.10:16384] [--out arrivals.jsonl]
        [--summary summary.json] [--ready-file PATH] [--echo] [--duration S]
    python -m hil.sims.rtp_stream gaps arrivals.jsonl

Both run until the duration ends or SIGTERM/SIGINT arrives, then print a JSON summary
on stdout (the sink also writes it to --summary).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import select
import signal
import socket
import struct
import sys
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TextIO

DEFAULT_SBC = "203.0.113.10"
DEFAULT_PORT = 16384
PACKETS_PER_S = 50
PAYLOAD_BYTES = 160  # G.711: 8000 samples/s x 20 ms x 1 byte
RTP_HEADER = struct.Struct("!BBHII")  # V/P/X/CC, M/PT, seq, timestamp, SSRC
PT_PCMU = 0
DSCP_EF_TOS = 46 << 2  # 0xB8
PCMU_SILENCE = b"\xff"
#: The sink's JSON lines reach the file at most this late.
FLUSH_EVERY_S = 0.1
#: Where the site's traffic appears to come from at the SBC on each path.
PRIMARY_SOURCE = "198.51.100.2"
CELLULAR_SOURCE = "192.0.2.6"


# --- pure: the outage figure ----------------------------------------------------------


@dataclass(frozen=True)
class Arrival:
    """One packet at the sink: monotonic arrival time, source address, RTP seq (if any)."""

    t_s: float
    source: str
    seq: int | None = None


@dataclass(frozen=True)
class PathSwitch:
    """The stream moved from one path to the other: silence from `last_s` to `first_s`."""

    from_source: str
    to_source: str
    last_s: float
    first_s: float
    gap_s: float
    #: Packets the sender sent in between that never arrived (from RTP seq; None without).
    lost: int | None


@dataclass(frozen=True)
class VoicePathGaps:
    switches: tuple[PathSwitch, ...]
    #: Longest primary -> cellular silence (the failover outage); None if it never moved.
    failover_gap_s: float | None
    #: Longest cellular -> primary silence (the failback outage); None if it never came back.
    failback_gap_s: float | None
    #: Longest silence between any two consecutive packets, whatever their sources.
    longest_silence_s: float | None
    packets_by_source: dict[str, int]
    #: Packets missing overall, from the RTP sequence numbers (duplicates counted once).
    lost: int
    duplicates: int


def voice_path_gaps(
    arrivals: Iterable[Arrival],
    primary: str = PRIMARY_SOURCE,
    cellular: str = CELLULAR_SOURCE,
) -> VoicePathGaps:
    """Where and for how long the stream went silent while switching paths.

    A switch is two consecutive packets (by arrival time, ignoring other sources) from
    different paths; its gap is the time between them. Packets from sources other than
    `primary` and `cellular` are counted but do not take part in switches.
    """
    ordered = sorted(arrivals, key=lambda a: a.t_s)
    counts = Counter(a.source for a in ordered)
    switches: list[PathSwitch] = []
    previous: Arrival | None = None
    for arrival in ordered:
        if arrival.source not in (primary, cellular):
            continue
        if previous is not None and previous.source != arrival.source:
            lost = None
            if previous.seq is not None and arrival.seq is not None:
                lost = max(0, _seq_delta(previous.seq, arrival.seq) - 1)
            switches.append(PathSwitch(previous.source, arrival.source, previous.t_s,
                                       arrival.t_s, arrival.t_s - previous.t_s, lost))
        previous = arrival
    failover = [s.gap_s for s in switches if s.from_source == primary]
    failback = [s.gap_s for s in switches if s.from_source == cellular]
    silences = [b.t_s - a.t_s for a, b in itertools.pairwise(ordered)]
    lost, duplicates = _loss(ordered)
    return VoicePathGaps(
        switches=tuple(switches),
        failover_gap_s=max(failover) if failover else None,
        failback_gap_s=max(failback) if failback else None,
        longest_silence_s=max(silences) if silences else None,
        packets_by_source=dict(counts),
        lost=lost,
        duplicates=duplicates,
    )


def _seq_delta(before: int, after: int) -> int:
    """Forward distance between two 16-bit RTP sequence numbers (wrap-aware)."""
    delta = (after - before) & 0xFFFF
    return delta - 0x10000 if delta >= 0x8000 else delta


def _loss(ordered: list[Arrival]) -> tuple[int, int]:
    extended: list[int] = []
    last: int | None = None
    for arrival in ordered:
        if arrival.seq is None:
            continue
        last = arrival.seq if last is None else last + _seq_delta(last & 0xFFFF, arrival.seq)
        extended.append(last)
    if not extended:
        return 0, 0
    unique = set(extended)
    return max(unique) - min(unique) + 1 - len(unique), len(extended) - len(unique)


def gaps_as_dict(gaps: VoicePathGaps) -> dict[str, Any]:
    return asdict(gaps)


# --- the shell: sender and sink ----------------------------------------------------------


class _Stop:
    def __init__(self) -> None:
        self.requested = False
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, *_: object) -> None:
        self.requested = True


def rtp_packet(seq: int, timestamp: int, ssrc: int, marker: bool = False) -> bytes:
    header = RTP_HEADER.pack(0x80, (0x80 if marker else 0) | PT_PCMU, seq & 0xFFFF,
                             timestamp & 0xFFFFFFFF, ssrc)
    return header + PCMU_SILENCE * PAYLOAD_BYTES


def parse_rtp(data: bytes) -> tuple[int, int, int] | None:
    """(seq, timestamp, ssrc) of an RTP version 2 packet, else None."""
    if len(data) < RTP_HEADER.size or data[0] >> 6 != 2:
        return None
    _, _, seq, timestamp, ssrc = RTP_HEADER.unpack_from(data)
    return seq, timestamp, ssrc


def send(to: tuple[str, int], local: tuple[str, int], *, duration_s: float | None,
         count: int | None, rate: float, dscp_ef: bool) -> dict[str, Any]:
    stop = _Stop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    if dscp_ef:
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, DSCP_EF_TOS)
    sock.bind(local)
    sock.setblocking(False)
    ssrc = int.from_bytes(os.urandom(4), "big")
    first_seq = int.from_bytes(os.urandom(2), "big")
    sent = errors = echoed = 0
    started = time.monotonic()
    interval = 1.0 / rate
    while not stop.requested:
        if count is not None and sent + errors >= count:
            break
        due = started + (sent + errors) * interval
        if duration_s is not None and due - started >= duration_s:
            break
        while (wait := due - time.monotonic()) > 0 and not stop.requested:
            readable, _, _ = select.select([sock], [], [], wait)
            if readable:
                echoed += _drain(sock)
        if stop.requested:
            break
        n = sent + errors
        try:
            sock.sendto(rtp_packet(first_seq + n, n * PAYLOAD_BYTES, ssrc, marker=n == 0), to)
            sent += 1
        except OSError:
            errors += 1  # no route, link down, rejected: a phone keeps sending
    echoed += _drain(sock)
    sock.close()
    return {"sent": sent, "send_errors": errors, "echoed": echoed, "ssrc": ssrc,
            "first_seq": first_seq & 0xFFFF, "duration_s": round(time.monotonic() - started, 3)}


def _drain(sock: socket.socket) -> int:
    received = 0
    while True:
        try:
            sock.recv(2048)
            received += 1
        except (BlockingIOError, OSError):
            return received


def sink(bind: tuple[str, int], out: TextIO | None, *, echo: bool, duration_s: float | None,
         ready_file: Path | None, primary: str, cellular: str) -> dict[str, Any]:
    stop = _Stop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(bind)
    sock.settimeout(FLUSH_EVERY_S)
    if ready_file is not None:
        ready_file.write_text(f"{os.getpid()}\n")
    arrivals: list[Arrival] = []
    started = time.monotonic()
    last_flush = started
    unflushed = False
    while not stop.requested:
        now = time.monotonic()
        if duration_s is not None and now - started >= duration_s:
            break
        if out is not None and unflushed and now - last_flush >= FLUSH_EVERY_S:
            # Readers follow the file live (the benchmark watches for the path switch).
            out.flush()
            last_flush, unflushed = now, False
        try:
            data, source = sock.recvfrom(2048)
        except (TimeoutError, InterruptedError):
            continue
        arrived = time.monotonic()
        rtp = parse_rtp(data)
        arrival = Arrival(arrived, source[0], rtp[0] if rtp else None)
        arrivals.append(arrival)
        if echo:
            with contextlib.suppress(OSError):
                sock.sendto(data, source)
        if out is not None:
            out.write(json.dumps({"t": arrived, "src": source[0], "sport": source[1],
                                  "seq": arrival.seq, "bytes": len(data)}) + "\n")
            unflushed = True
    if out is not None:
        out.flush()
    sock.close()
    summary = gaps_as_dict(voice_path_gaps(arrivals, primary, cellular))
    summary["received"] = len(arrivals)
    return summary


def read_arrivals(lines: Iterable[str]) -> list[Arrival]:
    arrivals = []
    for line in lines:
        if line.strip():
            record = json.loads(line)
            arrivals.append(Arrival(float(record["t"]), record["src"], record.get("seq")))
    return arrivals


def _endpoint(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host:
        raise argparse.ArgumentTypeError(f"{text!r}: use ADDRESS:PORT")
    return host, int(port)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hil.sims.rtp_stream", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("send", help="send a G.711-like RTP stream (the phone)")
    s.add_argument("--to", type=_endpoint, default=(DEFAULT_SBC, DEFAULT_PORT))
    s.add_argument("--local-port", type=int, default=DEFAULT_PORT)
    s.add_argument("--local-address", default="0.0.0.0")
    s.add_argument("--duration", type=float, help="seconds (default: until killed)")
    s.add_argument("--count", type=int, help="packets (default: until killed)")
    s.add_argument("--rate", type=float, default=PACKETS_PER_S, help="packets per second")
    s.add_argument("--dscp-ef", action="store_true", help="mark packets DSCP EF (46)")
    k = sub.add_parser("sink", help="record arrivals (the SBC's media port)")
    k.add_argument("--bind", type=_endpoint, default=(DEFAULT_SBC, DEFAULT_PORT))
    k.add_argument("--out", help="JSON lines of arrivals ('-' for stdout)")
    k.add_argument("--summary", type=Path, help="also write the summary JSON here on exit")
    k.add_argument("--ready-file", type=Path, help="written (with the pid) once listening")
    k.add_argument("--echo", action="store_true", help="send each packet back to its source")
    k.add_argument("--duration", type=float)
    k.add_argument("--primary", default=PRIMARY_SOURCE)
    k.add_argument("--cellular", default=CELLULAR_SOURCE)
    g = sub.add_parser("gaps", help="compute the outage figures from a sink's JSON lines")
    g.add_argument("file", type=Path)
    g.add_argument("--primary", default=PRIMARY_SOURCE)
    g.add_argument("--cellular", default=CELLULAR_SOURCE)
    args = parser.parse_args(argv)

    if args.command == "send":
        result = send(args.to, (args.local_address, args.local_port), duration_s=args.duration,
                      count=args.count, rate=args.rate, dscp_ef=args.dscp_ef)
    elif args.command == "sink":
        out: TextIO | None = None
        if args.out == "-":
            out = sys.stdout
        elif args.out:
            out = open(args.out, "a", encoding="utf-8")  # noqa: SIM115 (closed below)
        try:
            result = sink(args.bind, out, echo=args.echo, duration_s=args.duration,
                          ready_file=args.ready_file, primary=args.primary,
                          cellular=args.cellular)
        finally:
            if out is not None and out is not sys.stdout:
                out.close()
        if args.summary:
            args.summary.write_text(json.dumps(result, indent=2) + "\n")
    else:
        with args.file.open(encoding="utf-8") as handle:
            arrivals = read_arrivals(handle)
        result = gaps_as_dict(voice_path_gaps(arrivals, args.primary, args.cellular))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
