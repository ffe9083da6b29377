"""RFC 862 UDP echo client bound to one link: RTP-sized round trips and a packet train.

Why UDP echo rather than ping: a call is UDP marked EF to the provider's addresses, and
that is what a MikroTik (or the Linux driver) classifies as VoIP and steers to LTE in
failover. ICMP would take the router's default route, and would not show what a UDP
path does (a NAT, a firewall, a carrier that polices UDP). So the datagrams look like
the phone's: 172 B of UDP payload (a 12 B RTP v2 header, sequence number, timestamp and
a random SSRC, then 160 B of G.711 20 ms), IP TOS 0xB8 (DSCP EF), 50 a second.

Each run carries a random SSRC and an 8-byte token right after the RTP header; a reply
counts only when it is byte-for-byte the datagram sent under its sequence number, the
first time it comes back. Duplicates, replies to an earlier run, and anything foreign
or mangled are ignored (and their bytes still counted: the link carried them).

The socket is bound like the health probes' (`agent.health.icmp.bind_to_link`: the
link's device and source address) and *connected* to the responder: the kernel then
drops datagrams from anyone else, and reports ICMP errors about ours (port unreachable:
no echo service there) on the socket, which becomes the result's `detail`. An OSError
never escapes: a datagram that could not be sent is lost, and the reason is kept.

Time: round trips and arrivals are read with the injected `monotonic` (the agent's
Clock); pacing and the wait for stragglers use the injected `sleep`. The packet train
has no pacing and waits on the event loop's own timer, as the ICMP prober does.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import secrets
import socket
import struct
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from agent.health.emodel import codec as _codec
from agent.health.icmp import bind_to_link, oserror_text
from agent.installer.echo_figures import (
    DEFAULT_CALL_KBPS,
    IP_UDP_HEADER_BYTES,
    CapacityFigures,
    RoundTripFigures,
    capacity_figures,
    ip_bytes,
    round_trip_figures,
)

#: DSCP EF (46) in the TOS byte: how phones mark voice.
DSCP_EF_TOS = 0xB8
#: RTP v2 fixed header: V/P/X/CC, M/PT, sequence number, timestamp, SSRC (RFC 3550 §5.1).
RTP_HEADER = struct.Struct("!BBHII")
RTP_V2 = 0x80
PT_PCMU = 0
#: G.711 at 8 kHz, 20 ms a packet: the RTP timestamp advances by 160 each packet.
SAMPLES_PER_PACKET = 160
TOKEN_BYTES = 8
#: μ-law silence, what fills the payload after the token.
PCMU_SILENCE = b"\xff"
MIN_PAYLOAD_BYTES = RTP_HEADER.size + TOKEN_BYTES
#: The largest UDP payload that fits a 1500 B MTU unfragmented.
MAX_PAYLOAD_BYTES = 1500 - IP_UDP_HEADER_BYTES
#: Sequence numbers are 16 bits: one run never reuses one.
MAX_DATAGRAMS = 0x10000
#: Reads per readiness callback, so a flood cannot hold the event loop.
MAX_READS_PER_WAKEUP = 256

Target = tuple[str, int]


@dataclass(frozen=True)
class _Stream:
    """One run's datagrams: RTP v2 with a random SSRC, start sequence and timestamp."""

    payload_bytes: int
    ssrc: int
    token: bytes
    first_seq: int
    first_timestamp: int

    @classmethod
    def new(cls, payload_bytes: int) -> _Stream:
        return cls(
            payload_bytes=payload_bytes,
            ssrc=secrets.randbits(32),
            token=secrets.token_bytes(TOKEN_BYTES),
            first_seq=secrets.randbits(16),
            first_timestamp=secrets.randbits(32),
        )

    def datagram(self, index: int) -> bytes:
        header = RTP_HEADER.pack(
            RTP_V2,
            PT_PCMU,
            (self.first_seq + index) & 0xFFFF,
            (self.first_timestamp + index * SAMPLES_PER_PACKET) & 0xFFFFFFFF,
            self.ssrc,
        )
        fill = PCMU_SILENCE * (self.payload_bytes - MIN_PAYLOAD_BYTES)
        return header + self.token + fill

    def index_of(self, data: bytes, count: int) -> int | None:
        """Which of our `count` datagrams this is an exact echo of; None if none."""
        if len(data) != self.payload_bytes:
            return None
        seq = int.from_bytes(data[2:4], "big")
        index = (seq - self.first_seq) & 0xFFFF
        if index >= count or data != self.datagram(index):
            return None
        return index


class _EchoSession:
    """One connected UDP socket on the link: sends our datagrams, notes what returns."""

    def __init__(
        self, target: Target, stream: _Stream, count: int, monotonic: Callable[[], float]
    ) -> None:
        self.target = target
        self.stream = stream
        self.count = count
        self._monotonic = monotonic
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.sent_at: dict[int, float] = {}
        self.arrived_at: dict[int, float] = {}
        self.ignored = 0
        self.ignored_bytes = 0
        #: What went wrong, most frequent first in `detail` (send and ICMP errors).
        self.errors: Counter[str] = Counter()
        self.unsent = 0
        self.all_in = asyncio.Event()
        self._sending_done = False

    @property
    def where(self) -> str:
        return f"{self.target[0]}:{self.target[1]}"

    async def open(self, source_address: str | None, device: str | None, tos: int) -> None:
        """Bind to the link and connect to the responder; raises OSError."""
        loop = asyncio.get_running_loop()
        address = await _resolve(loop, *self.target)
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            bind_to_link(sock, source_address, device)
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, tos)
            sock.connect((address, self.target[1]))
            loop.add_reader(sock.fileno(), self._on_readable)
        except BaseException:
            sock.close()
            raise
        self._sock, self._loop = sock, loop

    def close(self) -> None:
        if self._sock is not None:
            if self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(self._sock.fileno())
            self._sock.close()
        self._sock = self._loop = None

    def send(self, index: int) -> None:
        """Send datagram `index`; a failure is noted, never raised.

        Linux reports an ICMP error about an earlier datagram (port unreachable) on the
        next call when nothing read it first, and then sends nothing: one retry tells
        that apart from an error about this datagram (no route).
        """
        assert self._sock is not None
        data = self.stream.datagram(index)
        first_error: str | None = None
        for _ in range(2):
            self.sent_at[index] = self._monotonic()
            try:
                self._sock.send(data)
                return
            except OSError as exc:
                text = _error_text(exc)
                if text != first_error:
                    self.errors[text] += 1
                if first_error is not None:
                    break
                first_error = text
        del self.sent_at[index]
        self.unsent += 1

    def sending_done(self) -> None:
        self._sending_done = True
        self._check_complete()

    def _check_complete(self) -> None:
        if self._sending_done and len(self.arrived_at) >= len(self.sent_at):
            self.all_in.set()

    def _on_readable(self) -> None:
        sock = self._sock
        for _ in range(MAX_READS_PER_WAKEUP):
            if sock is None:
                return
            try:
                data = sock.recv(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # an ICMP error about one of ours, now read
                self.errors[_error_text(exc)] += 1
                continue
            self._on_datagram(data, self._monotonic())

    def _on_datagram(self, data: bytes, now_s: float) -> None:
        index = self.stream.index_of(data, self.count)
        if index is None or index not in self.sent_at or index in self.arrived_at:
            self.ignored += 1
            self.ignored_bytes += ip_bytes(len(data))
            return
        self.arrived_at[index] = now_s
        self._check_complete()

    def rtt_s(self, index: int) -> float | None:
        arrived, sent = self.arrived_at.get(index), self.sent_at.get(index)
        if arrived is None or sent is None:
            return None
        return max(0.0, arrived - sent)

    def detail(self) -> str | None:
        """One line on what was missing and why; None when everything came back."""
        received = len(self.arrived_at)
        if received == self.count:
            return None
        if received == 0:
            text = f"no reply from {self.where}"
        else:
            text = f"{self.count - received} of {self.count} unanswered by {self.where}"
        if self.unsent:
            text += f"; {self.unsent} not sent"
        if self.errors:
            reasons = [f"{r} x{n}" if n > 1 else r for r, n in self.errors.most_common()]
            text += f" ({'; '.join(reasons)})"
        return text


async def _resolve(loop: asyncio.AbstractEventLoop, host: str, port: int) -> str:
    with contextlib.suppress(ValueError):
        return str(ipaddress.IPv4Address(host))
    infos = await loop.getaddrinfo(host, port, family=socket.AF_INET, type=socket.SOCK_DGRAM)
    return str(infos[0][4][0])


def _error_text(exc: OSError) -> str:
    if exc.errno == errno.ECONNREFUSED:
        return "port unreachable: no UDP echo service there"
    return oserror_text(exc)


def _check(count: int, payload_bytes: int, timeout_s: float, tos: int) -> None:
    if not 1 <= count <= MAX_DATAGRAMS:
        raise ValueError(f"count must lie in 1..{MAX_DATAGRAMS}")
    if not MIN_PAYLOAD_BYTES <= payload_bytes <= MAX_PAYLOAD_BYTES:
        raise ValueError(
            f"a datagram's payload must be {MIN_PAYLOAD_BYTES}..{MAX_PAYLOAD_BYTES} bytes"
        )
    if timeout_s < 0:
        raise ValueError("timeout_s must not be negative")
    if not 0 <= tos <= 0xFF:
        raise ValueError("tos is one byte")


async def rtp_round_trips(
    target: Target,
    *,
    count: int = 50,
    interval_s: float = 0.02,
    payload_bytes: int = 172,
    timeout_s: float = 1.0,
    source_address: str | None = None,
    device: str | None = None,
    tos: int = DSCP_EF_TOS,
    codec: str = "g711",
    monotonic: Callable[[], float],
    sleep: Callable[[float], Awaitable[None]],
) -> RoundTripFigures:
    """`count` RTP-sized datagrams to the echo responder at `target`, paced `interval_s`
    apart; waits up to `timeout_s` after the last for stragglers. Never raises OSError:
    what could not be sent or was not answered is lost, and `detail` says why."""
    _check(count, payload_bytes, timeout_s, tos)
    if interval_s < 0:
        raise ValueError("interval_s must not be negative")
    _codec(codec)  # a clear ValueError before any byte is spent
    session = _EchoSession(target, _Stream.new(payload_bytes), count, monotonic)
    try:
        await session.open(source_address, device, tos)
    except OSError as exc:
        return round_trip_figures(
            count,
            [None] * count,
            payload_bytes,
            codec,
            datagrams_sent=0,
            detail=f"cannot send to {session.where}: {_error_text(exc)}",
        )
    try:
        start_s = monotonic()
        for index in range(count):
            wait_s = start_s + index * interval_s - monotonic()
            if wait_s > 0:
                await sleep(wait_s)
            session.send(index)
        session.sending_done()
        await _wait_or_timeout(session.all_in, sleep(timeout_s))
    finally:
        session.close()
    return round_trip_figures(
        count,
        [session.rtt_s(i) for i in range(count)],
        payload_bytes,
        codec,
        datagrams_sent=len(session.sent_at),
        ignored=session.ignored,
        ignored_bytes=session.ignored_bytes,
        detail=session.detail(),
    )


async def _wait_or_timeout(done: asyncio.Event, timer: Awaitable[None]) -> None:
    """Until `done` is set or `timer` (the injected sleep) ends, whichever is first."""
    waiter = asyncio.ensure_future(done.wait())
    timeout = asyncio.ensure_future(timer)
    try:
        await asyncio.wait({waiter, timeout}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (waiter, timeout):
            task.cancel()
        await asyncio.gather(waiter, timeout, return_exceptions=True)


async def capacity_train(
    target: Target,
    *,
    packets: int = 40,
    packet_bytes: int = 1200,
    call_kbps: float = DEFAULT_CALL_KBPS,
    timeout_s: float = 1.5,
    source_address: str | None = None,
    device: str | None = None,
    tos: int = DSCP_EF_TOS,
    monotonic: Callable[[], float],
) -> CapacityFigures:
    """`packets` datagrams of `packet_bytes` (IP size) back to back to the echo
    responder; the spread of the echoes gives the round trip's bottleneck rate and the
    calls it carries (`agent.installer.echo_figures.capacity_figures`). Waits up to
    `timeout_s` after the last send. Never raises OSError (see `rtp_round_trips`)."""
    if packet_bytes < IP_UDP_HEADER_BYTES + MIN_PAYLOAD_BYTES:
        raise ValueError(
            f"packet_bytes is the IP size: at least {IP_UDP_HEADER_BYTES + MIN_PAYLOAD_BYTES}"
        )
    _check(packets, packet_bytes - IP_UDP_HEADER_BYTES, timeout_s, tos)
    session = _EchoSession(
        target, _Stream.new(packet_bytes - IP_UDP_HEADER_BYTES), packets, monotonic
    )
    try:
        await session.open(source_address, device, tos)
    except OSError as exc:
        return capacity_figures(
            packets,
            [],
            packet_bytes,
            call_kbps,
            datagrams_sent=0,
            detail=f"cannot send to {session.where}: {_error_text(exc)}",
        )
    try:
        for index in range(packets):
            session.send(index)
        session.sending_done()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(session.all_in.wait(), timeout_s)
    finally:
        session.close()
    sent_times = list(session.sent_at.values())
    return capacity_figures(
        packets,
        list(session.arrived_at.values()),
        packet_bytes,
        call_kbps,
        send_span_s=max(sent_times) - min(sent_times) if sent_times else None,
        datagrams_sent=len(session.sent_at),
        ignored=session.ignored,
        ignored_bytes=session.ignored_bytes,
        detail=session.detail(),
    )
