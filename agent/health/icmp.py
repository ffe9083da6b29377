"""ICMP echo bound to one link, on asyncio: the wire format and `IcmpProber`.

Why bound: the primary and the cellular link must be measured independently, whatever
the routing table says at the moment (VoIP may have been moved to LTE). The socket is
bound to the link's device (SO_BINDTODEVICE) and, when given, its source address (which
also selects the link's policy-routing table).

Why one socket per link, reused: the primary is probed every 0.2-0.25 s; a socket per
ping would churn file descriptors and, for raw sockets, re-parse every ICMP packet the
host receives in each of them.

Time: RTTs are measured with the injected `monotonic` (the agent's Clock); timeouts run
on the event loop's own timer. IPv4 only, as the configuration is.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass

from drivers.types import ProbeResult

log = logging.getLogger(__name__)

ICMP_ECHO_REPLY = 0
ICMP_UNREACHABLE = 3
ICMP_ECHO_REQUEST = 8
ICMP_TIME_EXCEEDED = 11
#: Small on purpose: on LTE every probe byte is billed. Marks the packets as ours.
ICMP_PAYLOAD = b"cpe-agnt"


# -- ICMP wire format (pure helpers) ---------------------------------------------------


def icmp_checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071)."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def echo_request(ident: int, seq: int, payload: bytes = ICMP_PAYLOAD) -> bytes:
    header = struct.pack("!BBHHH", ICMP_ECHO_REQUEST, 0, 0, ident, seq)
    checksum = icmp_checksum(header + payload)
    return struct.pack("!BBHHH", ICMP_ECHO_REQUEST, 0, checksum, ident, seq) + payload


@dataclass(frozen=True)
class IcmpMessage:
    """An echo reply, or an error about one of our echo requests."""

    icmp_type: int
    code: int
    ident: int
    seq: int
    #: For errors: where our original request was going.
    original_dst: str | None = None


def parse_icmp(data: bytes, *, has_ip_header: bool) -> IcmpMessage | None:
    """Echo reply or error-about-an-echo from a datagram; None for anything else.

    Raw sockets deliver the IPv4 header too; ping (SOCK_DGRAM) sockets do not.
    """
    if has_ip_header:
        if len(data) < 20:
            return None
        data = data[(data[0] & 0x0F) * 4 :]
    if len(data) < 8:
        return None
    icmp_type, code, _, ident, seq = struct.unpack("!BBHHH", data[:8])
    if icmp_type == ICMP_ECHO_REPLY:
        return IcmpMessage(icmp_type, code, ident, seq)
    if icmp_type in (ICMP_UNREACHABLE, ICMP_TIME_EXCEEDED):
        inner = data[8:]
        if len(inner) < 28:
            return None
        ihl = (inner[0] & 0x0F) * 4
        original = inner[ihl : ihl + 8]
        if len(original) < 8 or original[0] != ICMP_ECHO_REQUEST:
            return None
        _, _, _, o_ident, o_seq = struct.unpack("!BBHHH", original)
        dst = socket.inet_ntoa(inner[16:20])
        return IcmpMessage(icmp_type, code, o_ident, o_seq, original_dst=dst)
    return None


def bind_to_link(
    sock: socket.socket, source_address: str | None, device: str | None, port: int = 0
) -> None:
    """Non-blocking, on the link's device, from the link's address and port (each when
    given). A fixed port is how a MikroTik steers the agent's probes to one link."""
    sock.setblocking(False)
    if device:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, device.encode() + b"\0")
    if source_address or port:
        sock.bind((source_address or "0.0.0.0", port))


def _open_icmp_socket(kind: str, source_address: str | None, device: str | None) -> socket.socket:
    sock_type = socket.SOCK_DGRAM if kind == "dgram" else socket.SOCK_RAW
    sock = socket.socket(socket.AF_INET, sock_type, socket.IPPROTO_ICMP)
    try:
        bind_to_link(sock, source_address, device)
    except BaseException:
        sock.close()
        raise
    return sock


def oserror_text(exc: OSError) -> str:
    """The OS's own words ("Network is unreachable"), for a ProbeResult's detail."""
    return exc.strerror or str(exc) or type(exc).__name__


# -- ICMP prober -------------------------------------------------------------------------


@dataclass
class _PendingEcho:
    target: str
    sent_at_s: float
    future: asyncio.Future[ProbeResult]


class IcmpProber:
    """ICMP echo over one link, one socket for every probe.

    Tries an unprivileged ping socket (SOCK_DGRAM/IPPROTO_ICMP, allowed by
    net.ipv4.ping_group_range) and falls back to a raw socket (root or CAP_NET_RAW).
    `mode` forces one ("dgram" / "raw"). The socket opens on first use and reopens after
    a failure, so an interface that comes back later (LTE modem re-enumerating) is
    picked up without restarting the agent.
    """

    def __init__(
        self,
        *,
        monotonic: Callable[[], float],
        source_address: str | None = None,
        device: str | None = None,
        timeout_s: float = 1.0,
        mode: str = "auto",
    ) -> None:
        if mode not in ("auto", "dgram", "raw"):
            raise ValueError(f"mode must be auto, dgram or raw, got {mode!r}")
        self._monotonic = monotonic
        self._source_address = source_address
        self._device = device
        self._timeout_s = timeout_s
        self._mode = mode
        self._sock: socket.socket | None = None
        self._kind: str | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ident = random.randrange(1, 0x10000)
        self._seq = random.randrange(0x10000)
        self._pending: dict[int, _PendingEcho] = {}
        self._warned: str | None = None

    @property
    def kind(self) -> str | None:
        """The socket type in use ("dgram" or "raw") once open; None before."""
        return self._kind

    def _ensure_open(self) -> socket.socket:
        if self._sock is not None:
            return self._sock
        loop = asyncio.get_running_loop()
        kinds = ["dgram", "raw"] if self._mode == "auto" else [self._mode]
        error: OSError | None = None
        for kind in kinds:
            try:
                sock = _open_icmp_socket(kind, self._source_address, self._device)
            except OSError as exc:
                error = exc
                continue
            loop.add_reader(sock.fileno(), self._on_readable)
            self._sock, self._kind, self._loop = sock, kind, loop
            self._warned = None
            return sock
        assert error is not None
        raise error

    def close(self) -> None:
        if self._sock is not None:
            if self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(self._sock.fileno())
            self._sock.close()
        self._sock = self._kind = self._loop = None
        for pending in self._pending.values():
            if not pending.future.done():
                pending.future.cancel()
        self._pending.clear()

    def _next_seq(self) -> int:
        for _ in range(0x10000):
            self._seq = (self._seq + 1) & 0xFFFF
            if self._seq not in self._pending:
                return self._seq
        raise RuntimeError("65536 ICMP probes in flight")

    def _failed(self, target: str, detail: str) -> ProbeResult:
        return ProbeResult(target=target, method="icmp", answered=False, detail=detail)

    async def probe(self, target: str, timeout_s: float | None = None) -> ProbeResult:
        """One echo to `target` (an IPv4 address); answered with its RTT, or why not."""
        timeout = self._timeout_s if timeout_s is None else timeout_s
        try:
            sock = self._ensure_open()
        except OSError as exc:
            text = f"cannot open ICMP socket: {oserror_text(exc)}"
            if self._warned != text:
                log.warning("%s (device %s)", text, self._device or "any")
                self._warned = text
            return self._failed(target, text)
        seq = self._next_seq()
        future: asyncio.Future[ProbeResult] = asyncio.get_running_loop().create_future()
        pending = _PendingEcho(target, self._monotonic(), future)
        self._pending[seq] = pending
        try:
            sock.sendto(echo_request(self._ident, seq), (target, 0))
        except OSError as exc:
            self._pending.pop(seq, None)
            return self._failed(target, f"send failed: {oserror_text(exc)}")
        try:
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            return self._failed(target, "timeout")
        finally:
            self._pending.pop(seq, None)

    def _on_readable(self) -> None:
        sock = self._sock
        while sock is not None:
            try:
                data, address = sock.recvfrom(2048)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # an ICMP error queued on the socket; timeouts cover it
                log.debug("ICMP socket error: %s", exc)
                return
            self._handle(data, address[0], self._monotonic())

    def _handle(self, data: bytes, source: str, now_s: float) -> None:
        message = parse_icmp(data, has_ip_header=self._kind == "raw")
        if message is None:
            return
        # Ping sockets: the kernel owns the identifier and demultiplexes for us.
        if self._kind == "raw" and message.ident != self._ident:
            return
        pending = self._pending.get(message.seq)
        if pending is None or pending.future.done():
            return
        if message.icmp_type == ICMP_ECHO_REPLY:
            if source != pending.target:
                return
            result = ProbeResult(
                target=pending.target,
                method="icmp",
                answered=True,
                rtt_s=max(0.0, now_s - pending.sent_at_s),
            )
        else:
            if message.original_dst != pending.target:
                return
            what = "unreachable" if message.icmp_type == ICMP_UNREACHABLE else "TTL exceeded"
            result = self._failed(
                pending.target, f"{what} (ICMP {message.icmp_type}/{message.code} from {source})"
            )
        pending.future.set_result(result)
