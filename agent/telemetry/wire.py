"""Bytes on the wire of the agent's own MQTT connections, measured at the socket.

Why at the socket: on LTE every byte is billed, and what is billed is IP packets, not
MQTT payloads. TLS records, MQTT framing, keepalives, TCP acknowledgements and
retransmissions all count. Linux keeps per-connection counters (`TCP_INFO`): payload
bytes sent (retransmissions included) and received, and segments each way; each
segment adds its IP and TCP headers, which this module adds per segment (20 or 40
bytes of IP, 20 of TCP, 12 more with TCP timestamps). The opening and closing
handshakes (SYN, FIN and their ACKs) are segments too, counted when the socket saw
them; the closing ones are estimated (`CLOSE_SEGMENTS`), as the socket is read just
before it closes. Link-layer framing (the carrier's) is not counted.

`WireMeter` watches one connection: the MQTT client hands it the TCP socket as soon
as it exists (before TLS), then reads it (`sample`) whenever it likes, and one last
time just before the socket closes. Each delta goes to the uplink the agent was on
(`primary` or `cellular`), so the meter can take the agent's LTE bytes (`totals`).
No paho here: `telemetry.mqtt` wires this into its client.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from dataclasses import dataclass

#: struct tcp_info offsets (linux/tcp.h); stable ABI, fields appended over the years.
_OPTIONS = 5  # __u8 tcpi_options
_BYTES_ACKED = 120  # __u64, Linux 4.1
_BYTES_RECEIVED = 128  # __u64, Linux 4.1
_SEGS_OUT = 136  # __u32, Linux 4.2
_SEGS_IN = 140  # __u32, Linux 4.2
_BYTES_SENT = 200  # __u64 (retransmissions included), Linux 4.19
_TCP_INFO_LEN = 232
_TCPI_OPT_TIMESTAMPS = 1
#: FIN, and the ACK of the peer's FIN, each way: read too late to be in the counters.
CLOSE_SEGMENTS = 2


@dataclass(frozen=True)
class TcpCounters:
    """One reading of a connection's counters (monotonic over its life)."""

    payload_out: int
    payload_in: int
    segments_out: int
    segments_in: int
    header_bytes: int

    @property
    def wire_out(self) -> int:
        return self.payload_out + self.segments_out * self.header_bytes

    @property
    def wire_in(self) -> int:
        return self.payload_in + self.segments_in * self.header_bytes


def read_tcp_info(sock: socket.socket) -> TcpCounters | None:
    """The counters of a connected TCP socket; None where the platform has no TCP_INFO."""
    option = getattr(socket, "TCP_INFO", None)
    if option is None:
        return None
    try:
        raw = sock.getsockopt(socket.IPPROTO_TCP, option, _TCP_INFO_LEN)
    except OSError:
        return None
    if len(raw) < _SEGS_IN + 4:
        return None
    (acked,) = struct.unpack_from("=Q", raw, _BYTES_ACKED)
    (received,) = struct.unpack_from("=Q", raw, _BYTES_RECEIVED)
    seg_out, seg_in = struct.unpack_from("=II", raw, _SEGS_OUT)
    sent = struct.unpack_from("=Q", raw, _BYTES_SENT)[0] if len(raw) >= _BYTES_SENT + 8 else acked
    ip_header = 40 if sock.family == socket.AF_INET6 else 20
    tcp_header = 20 + (12 if raw[_OPTIONS] & _TCPI_OPT_TIMESTAMPS else 0)
    return TcpCounters(sent, received, seg_out, seg_in, ip_header + tcp_header)


@dataclass
class WireTotals:
    """Bytes on the wire per uplink, since the agent started (for the meter: take deltas)."""

    primary_out: int = 0
    primary_in: int = 0
    cellular_out: int = 0
    cellular_in: int = 0
    #: TCP payload (TLS records, MQTT packets) both uplinks, without IP/TCP headers.
    payload_out: int = 0
    payload_in: int = 0
    #: Connections whose socket offered no counters (not Linux): their bytes are missing.
    unmeasured_connections: int = 0

    @property
    def cellular(self) -> int:
        return self.cellular_out + self.cellular_in

    @property
    def primary(self) -> int:
        return self.primary_out + self.primary_in


class WireMeter:
    """Totals over many connections; one connection watched at a time. Thread-safe:
    paho's network thread reports the closing socket, the asyncio loop samples."""

    def __init__(self) -> None:
        self.totals = WireTotals()
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._seen = TcpCounters(0, 0, 0, 0, 0)
        self._uplink = "primary"

    @property
    def uplink(self) -> str:
        return self._uplink

    def set_uplink(self, uplink: str) -> None:
        """Bytes so far go to the old uplink; bytes from now on to the new one."""
        with self._lock:
            self._sample_locked()
            self._uplink = uplink

    def watch(self, tcp_socket: socket.socket) -> None:
        """A new connection's TCP socket (before TLS wraps it).

        A duplicate descriptor is kept, so the counters stay readable whatever TLS does
        with the original; `finish` must close it (it holds the connection open).
        """
        with self._lock:
            self._finish_locked()
            try:
                self._sock = tcp_socket.dup()
            except OSError:
                self._sock = None
            self._seen = TcpCounters(0, 0, 0, 0, 0)

    def sample(self) -> None:
        with self._lock:
            self._sample_locked()

    def finish(self) -> None:
        """The connection ends: last reading, closing segments, descriptor closed."""
        with self._lock:
            self._finish_locked()

    def _sample_locked(self) -> TcpCounters | None:
        if self._sock is None:
            return None
        now = read_tcp_info(self._sock)
        if now is None:
            return None
        out = now.wire_out - self._seen.wire_out
        inn = now.wire_in - self._seen.wire_in
        self.totals.payload_out += max(0, now.payload_out - self._seen.payload_out)
        self.totals.payload_in += max(0, now.payload_in - self._seen.payload_in)
        self._seen = now
        if self._uplink == "cellular":
            self.totals.cellular_out += max(0, out)
            self.totals.cellular_in += max(0, inn)
        else:
            self.totals.primary_out += max(0, out)
            self.totals.primary_in += max(0, inn)
        return now

    def _finish_locked(self) -> None:
        sock, self._sock = self._sock, None
        if sock is None:
            return
        self._sock = sock
        last = self._sample_locked()
        self._sock = None
        if last is None:
            self.totals.unmeasured_connections += 1
        elif last.segments_out:
            close = CLOSE_SEGMENTS * last.header_bytes
            if self._uplink == "cellular":
                self.totals.cellular_out += close
                self.totals.cellular_in += close
            else:
                self.totals.primary_out += close
                self.totals.primary_in += close
        with contextlib.suppress(OSError):
            sock.close()
