"""The installer's UDP echo client against a real RFC 862 responder on 127.0.0.1.

Every wait is the client's own deadline (its timeout after the last send), never a
sleep in the test.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import AsyncIterator, Callable
from typing import cast

import pytest

from agent.clock import Clock
from agent.installer.echo import DSCP_EF_TOS, capacity_train, rtp_round_trips
from agent.installer.echo_figures import CapacityFigures, RoundTripFigures
from hil.sims.udp_echo import UdpEchoResponder

CLOCK = Clock()
#: 172 B of payload + 28 B of IP and UDP.
WIRE_BYTES = 200


@pytest.fixture
async def responder() -> AsyncIterator[UdpEchoResponder]:
    async with UdpEchoResponder("127.0.0.1", 0) as echo:
        yield echo


async def _round_trips(target: tuple[str, int], **kwargs: object) -> RoundTripFigures:
    options: dict = {"count": 20, "interval_s": 0.002, "timeout_s": 1.0, **kwargs}
    return await rtp_round_trips(target, monotonic=CLOCK.monotonic, sleep=CLOCK.sleep, **options)


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def test_all_answered_is_no_loss_and_bytes_are_exact(
    responder: UdpEchoResponder,
) -> None:
    f = await _round_trips(responder.address, count=20)
    assert (f.sent, f.received, f.loss_pct, f.ignored) == (20, 20, 0.0, 0)
    assert (f.bytes_sent, f.bytes_received) == (20 * WIRE_BYTES, 20 * WIRE_BYTES)
    assert f.detail is None
    assert f.rtt_ms is not None and 0 <= f.rtt_ms < 1000
    assert f.rtt_p90_ms is not None and f.rtt_p90_ms >= f.rtt_ms
    assert f.jitter_ms is not None and f.jitter_ms >= 0
    assert f.mos is not None and f.mos > 4.0  # loopback: no loss, tiny delay
    assert responder.received == 20 and responder.answered == 20


async def test_every_fifth_dropped_is_20_percent_loss(responder: UdpEchoResponder) -> None:
    responder.drop_every = 5
    f = await _round_trips(responder.address, count=50, timeout_s=0.3)
    assert (f.sent, f.received, f.loss_pct) == (50, 40, 20.0)
    assert (f.bytes_sent, f.bytes_received) == (50 * WIRE_BYTES, 40 * WIRE_BYTES)
    host, port = responder.address
    assert f.detail == f"10 of 50 unanswered by {host}:{port}"
    assert f.mos is not None and f.r_factor is not None


async def test_absent_responder_is_all_lost_and_says_so() -> None:
    port = _free_udp_port()
    f = await _round_trips(("127.0.0.1", port), count=5, timeout_s=0.2)
    assert (f.sent, f.received, f.loss_pct) == (5, 0, 100.0)
    assert f.rtt_ms is None and f.mos is None and f.jitter_ms is None
    assert f.bytes_received == 0
    # Each datagram left (a port unreachable is about the one before, not this one).
    assert f.bytes_sent == 5 * WIRE_BYTES
    assert f.detail is not None
    assert f.detail.startswith(f"no reply from 127.0.0.1:{port}")
    assert "port unreachable" in f.detail


async def test_a_socket_that_cannot_be_bound_is_all_lost_not_an_exception() -> None:
    # 192.0.2.99 is not an address of this host: bind() fails with EADDRNOTAVAIL.
    f = await _round_trips(("127.0.0.1", 7), count=5, source_address="192.0.2.99")
    assert (f.sent, f.received, f.bytes_sent, f.bytes_received) == (5, 0, 0, 0)
    assert f.detail == "cannot send to 127.0.0.1:7: Cannot assign requested address"
    c = await capacity_train(
        ("127.0.0.1", 7), packets=5, source_address="192.0.2.99", monotonic=CLOCK.monotonic
    )
    assert (c.packets_received, c.bytes_sent, c.rate_kbps) == (0, 0, None)
    assert c.detail == "cannot send to 127.0.0.1:7: Cannot assign requested address"


async def test_duplicates_are_ignored_but_their_bytes_count(
    responder: UdpEchoResponder,
) -> None:
    responder.duplicate = True
    f = await _round_trips(responder.address, count=10)
    assert (f.received, f.loss_pct, f.ignored) == (10, 0.0, 10)
    assert f.bytes_received == 2 * 10 * WIRE_BYTES
    assert f.bytes_sent == 10 * WIRE_BYTES


class _Mischief(asyncio.DatagramProtocol):
    """Answers each datagram with strays first, then the true echo:
    a mangled copy, a truncated one, one under another SSRC, the first datagram it ever
    saw (an echo of an earlier run), and an exact copy sent from another port."""

    def __init__(self, other_port: socket.socket) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.first: bytes | None = None
        self.other_port = other_port

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        assert self.transport is not None
        if self.first is None:
            self.first = data
        else:
            self.transport.sendto(self.first, addr)  # a previous run's echo
        mangled = bytearray(data)
        mangled[14] ^= 0xFF  # inside the token
        other_ssrc = data[:8] + bytes(b ^ 0x55 for b in data[8:12]) + data[12:]
        for stray in (bytes(mangled), data[:-1], other_ssrc, b"hello"):
            self.transport.sendto(stray, addr)
        self.other_port.sendto(data, addr)  # right bytes, wrong sender: the kernel drops it
        self.transport.sendto(data, addr)


async def test_foreign_stale_and_mangled_replies_are_ignored() -> None:
    loop = asyncio.get_running_loop()
    other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    other.bind(("127.0.0.1", 0))
    transport, _ = await loop.create_datagram_endpoint(
        lambda: _Mischief(other), local_addr=("127.0.0.1", 0)
    )
    try:
        target = transport.get_extra_info("sockname")[:2]
        first = await _round_trips(target, count=5)
        assert (first.received, first.loss_pct) == (5, 0.0)
        # Four strays per datagram, plus the earlier datagram replayed from the second on.
        assert first.ignored == 4 * 5 + 4
        second = await _round_trips(target, count=5)
        assert (second.received, second.loss_pct) == (5, 0.0)
        assert second.ignored == 4 * 5 + 5  # the first run's datagram each time
        # Per datagram: mangled and other-SSRC copies (200 B each), a truncated one
        # (199 B) and "hello" (28 + 5 B); and the first run's datagram (200 B).
        stray_bytes = (2 * WIRE_BYTES + (WIRE_BYTES - 1) + 33) * 5 + WIRE_BYTES * 5
        assert second.bytes_received == 5 * WIRE_BYTES + stray_bytes
        assert second.detail is None
    finally:
        transport.close()
        other.close()


async def test_a_slow_responder_shows_in_the_round_trip(responder: UdpEchoResponder) -> None:
    responder.delay_s = 0.05
    f = await _round_trips(responder.address, count=5)
    assert f.received == 5
    assert f.rtt_ms is not None and f.rtt_ms >= 50.0


async def test_answers_after_the_timeout_are_lost(responder: UdpEchoResponder) -> None:
    responder.delay_s = 0.5
    f = await _round_trips(responder.address, count=3, timeout_s=0.05)
    assert (f.received, f.loss_pct) == (0, 100.0)
    assert f.detail == "no reply from {}:{}".format(*responder.address)


async def test_pacing_follows_the_interval_through_the_injected_sleep(
    responder: UdpEchoResponder,
) -> None:
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        await CLOCK.sleep(seconds)

    started = CLOCK.monotonic()
    f = await rtp_round_trips(
        responder.address,
        count=10,
        interval_s=0.02,
        timeout_s=1.0,
        monotonic=CLOCK.monotonic,
        sleep=sleep,
    )
    elapsed = CLOCK.monotonic() - started
    assert f.received == 10
    assert elapsed >= 9 * 0.02
    # Nine waits between sends, all within one interval (plus, at most, the timeout wait).
    assert len([s for s in slept if s <= 0.02]) >= 9
    assert 1.0 not in slept or elapsed < 1.0


async def test_datagrams_look_like_rtp_marked_ef() -> None:
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    sink.setsockopt(socket.IPPROTO_IP, socket.IP_RECVTOS, 1)
    sink.setblocking(False)
    try:
        f = await _round_trips(sink.getsockname(), count=3, timeout_s=0.05)
        assert f.received == 0
        packets = []
        for _ in range(3):
            data, ancillary, _, _ = sink.recvmsg(2048, socket.CMSG_SPACE(1))
            tos = [c[2][0] for c in ancillary if c[:2] == (socket.IPPROTO_IP, socket.IP_TOS)]
            packets.append((data, tos))
    finally:
        sink.close()
    headers = [struct.unpack("!BBHII", data[:12]) for data, _ in packets]
    assert all(len(data) == 172 and tos == [DSCP_EF_TOS] for data, tos in packets)
    assert [h[0] for h in headers] == [0x80] * 3  # RTP v2, no padding/extension/CSRC
    assert [h[1] for h in headers] == [0] * 3  # PT 0: PCMU
    seqs = [h[2] for h in headers]
    assert [(s - seqs[0]) & 0xFFFF for s in seqs] == [0, 1, 2]
    stamps = [h[3] for h in headers]
    assert [(s - stamps[0]) & 0xFFFFFFFF for s in stamps] == [0, 160, 320]
    assert len({h[4] for h in headers}) == 1  # one SSRC for the run
    assert len({data[12:20] for data, _ in packets}) == 1  # and one token


async def _train(target: tuple[str, int], **kwargs: object) -> CapacityFigures:
    return await capacity_train(target, monotonic=CLOCK.monotonic, **kwargs)  # type: ignore[arg-type]


async def test_capacity_train_on_loopback_all_back(responder: UdpEchoResponder) -> None:
    c = await _train(responder.address, packets=40, packet_bytes=1200)
    assert (c.packets_sent, c.packets_received) == (40, 40)
    assert (c.bytes_sent, c.bytes_received) == (48_000, 48_000)
    assert c.rate_kbps is not None and c.calls is not None and c.calls >= 1
    assert c.call_kbps == 90.0 and c.detail is None


async def test_capacity_train_measures_a_bottleneck(responder: UdpEchoResponder) -> None:
    # The responder answers no faster than 2 Mbit/s: 4.8 ms per 1200 B packet.
    responder.rate_kbps = 2000.0
    c = await _train(responder.address, packets=40, packet_bytes=1200, timeout_s=1.5)
    assert c.packets_received == 40
    assert c.rate_kbps is not None and c.rate_kbps == pytest.approx(2000.0, rel=0.15)
    assert not c.at_least
    assert c.calls is not None and 19 <= c.calls <= 25  # 2000 / 90 = 22.2


async def test_capacity_train_with_loss_and_no_responder(responder: UdpEchoResponder) -> None:
    responder.drop_every = 5
    c = await _train(responder.address, packets=40, timeout_s=0.3)
    assert (c.packets_received, c.bytes_sent, c.bytes_received) == (32, 48_000, 32 * 1200)
    assert c.detail == "8 of 40 unanswered by {}:{}".format(*responder.address)
    port = _free_udp_port()
    gone = await _train(("127.0.0.1", port), packets=10, timeout_s=0.2)
    assert (gone.packets_received, gone.rate_kbps, gone.calls) == (0, None, None)
    assert gone.detail is not None and gone.detail.startswith(f"no reply from 127.0.0.1:{port}")


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda t: _round_trips(t, count=0), "count"),
        (lambda t: _round_trips(t, payload_bytes=12), "payload"),
        (lambda t: _round_trips(t, codec="speex"), "unknown codec"),
        (lambda t: _train(t, packet_bytes=40), "IP size"),
    ],
)
async def test_bad_arguments_are_refused_before_any_byte(
    responder: UdpEchoResponder, call: Callable, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        await call(responder.address)
    assert responder.received == 0
