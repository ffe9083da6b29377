"""Probes on real sockets (loopback, throwaway namespaces) and the monitor on a fake clock."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import itertools
import os
import re
import socket
import struct
import subprocess
import time

import pytest

from agent.clock import ManualClock
from agent.health.icmp import (
    ICMP_ECHO_REPLY,
    ICMP_UNREACHABLE,
    echo_request,
    icmp_checksum,
    parse_icmp,
)
from agent.health.monitor import LinkSpec, Monitor
from agent.health.probes import IcmpProber, SipOptionsProber
from agent.health.scoring import HealthPolicy, LinkAssessment, Verdict
from drivers.types import ProbeResult

IS_ROOT = os.geteuid() == 0


def root_only(test):
    """Raw ICMP sockets (and namespaces) need root; say so rather than fail elsewhere."""
    skip = pytest.mark.skipif(not IS_ROOT, reason="needs root for raw ICMP sockets")
    return pytest.mark.root(skip(test))


# -- the ICMP wire format ----------------------------------------------------------------


def ipv4_header(src: str, dst: str, proto: int = 1, ihl_words: int = 5) -> bytes:
    options = b"\0" * (4 * (ihl_words - 5))
    return (
        struct.pack("!BBHHHBBH", 0x40 | ihl_words, 0, 0, 0, 0, 64, proto, 0)
        + socket.inet_aton(src)
        + socket.inet_aton(dst)
        + options
    )


def test_echo_request_checksums_to_zero():
    packet = echo_request(0x1234, 7)
    assert packet[:2] == b"\x08\x00"
    assert struct.unpack("!HH", packet[4:8]) == (0x1234, 7)
    assert icmp_checksum(packet) == 0


REPLY = struct.pack("!BBHHH", ICMP_ECHO_REPLY, 0, 0, 0x1234, 7) + b"cpe-agnt"
UNREACH = (
    struct.pack("!BBHI", ICMP_UNREACHABLE, 1, 0, 0)
    + ipv4_header("192.0.2.1", "198.51.100.7")
    + echo_request(0x1234, 9)[:8]
)

# (datagram, has IP header, expected (type, code, ident, seq, original dst) or None)
PARSE_TABLE = [
    (REPLY, False, (0, 0, 0x1234, 7, None)),
    (ipv4_header("127.0.0.1", "127.0.0.1") + REPLY, True, (0, 0, 0x1234, 7, None)),
    (ipv4_header("127.0.0.1", "127.0.0.1", ihl_words=6) + REPLY, True, (0, 0, 0x1234, 7, None)),
    (ipv4_header("192.0.2.1", "192.0.2.2") + UNREACH, True, (3, 1, 0x1234, 9, "198.51.100.7")),
    (echo_request(1, 1), False, None),  # our own request, looped back on a raw socket
    (REPLY[:6], False, None),
    (b"", True, None),
    (UNREACH[:20], False, None),  # error too short to name the probe
]


@pytest.mark.parametrize(("data", "has_ip", "expected"), PARSE_TABLE)
def test_parse_icmp(data, has_ip, expected):
    message = parse_icmp(data, has_ip_header=has_ip)
    if expected is None:
        assert message is None
    else:
        assert message is not None
        got = (message.icmp_type, message.code, message.ident, message.seq, message.original_dst)
        assert got == expected


# -- ICMP on real sockets ------------------------------------------------------------------


@root_only
async def test_icmp_to_loopback_is_answered_with_an_rtt():
    prober = IcmpProber(monotonic=time.monotonic, timeout_s=1.0)
    try:
        result = await prober.probe("127.0.0.1")
        assert result.answered, result.detail
        assert result.method == "icmp" and result.target == "127.0.0.1"
        assert result.rtt_s is not None and 0 <= result.rtt_s < 0.5
        assert prober.kind in ("dgram", "raw")
        # One socket for every probe; concurrent probes are told apart by sequence.
        sock = prober._sock
        many = await asyncio.gather(*(prober.probe("127.0.0.1") for _ in range(20)))
        assert all(r.answered for r in many)
        assert prober._sock is sock
    finally:
        prober.close()


@root_only
async def test_icmp_bound_to_a_device_and_source():
    prober = IcmpProber(
        monotonic=time.monotonic, device="lo", source_address="127.0.0.1", timeout_s=1.0
    )
    try:
        assert (await prober.probe("127.0.0.1")).answered
    finally:
        prober.close()


async def test_icmp_without_a_socket_says_why():
    prober = IcmpProber(monotonic=time.monotonic, device="no-such-if0", mode="raw")
    result = await prober.probe("127.0.0.1")
    assert not result.answered
    assert result.detail is not None and result.detail.startswith("cannot open ICMP socket")


def test_icmp_mode_is_checked():
    with pytest.raises(ValueError, match="mode"):
        IcmpProber(monotonic=time.monotonic, mode="udp")


# -- throwaway namespaces ------------------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNET = 0x40000000
_ns_counter = itertools.count()


@contextlib.contextmanager
def inside(netns: str):
    """Run this thread (the event loop's) in a namespace, so sockets opened here live there."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/var/run/netns/{netns}", os.O_RDONLY)
    try:
        if _libc.setns(target, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
        yield
    finally:
        _libc.setns(own, CLONE_NEWNET)
        os.close(own)
        os.close(target)


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


@pytest.fixture
def netns(request):
    """A namespace with lo up and 192.0.2.1/24 on a device that drops everything sent to it
    (dummy; ifb where the kernel has no dummy driver). Nothing answers 192.0.2.99.
    """
    if not IS_ROOT:
        pytest.skip("needs root: creates network namespaces")
    name = f"cpt-h{os.getpid()}-{next(_ns_counter)}"
    ip("netns", "add", name)
    request.addfinalizer(lambda: subprocess.run(["ip", "netns", "del", name], check=False))
    ip("-n", name, "link", "set", "lo", "up")
    try:
        ip("-n", name, "link", "add", "sink0", "type", "dummy")
    except subprocess.CalledProcessError:
        ip("-n", name, "link", "add", "sink0", "type", "ifb")
    ip("-n", name, "addr", "add", "192.0.2.1/24", "dev", "sink0")
    ip("-n", name, "link", "set", "sink0", "up")
    return name


@pytest.mark.root
async def test_icmp_to_an_unrouted_address_times_out(netns):
    prober = IcmpProber(monotonic=time.monotonic, timeout_s=0.3)
    try:
        with inside(netns):
            started = time.monotonic()
            result = await prober.probe("192.0.2.99")
        assert not result.answered
        assert result.detail == "timeout"
        assert 0.25 <= time.monotonic() - started < 1.0
    finally:
        prober.close()


@pytest.mark.root
async def test_icmp_with_no_route_fails_at_once(netns):
    prober = IcmpProber(monotonic=time.monotonic, timeout_s=2.0)
    try:
        with inside(netns):
            started = time.monotonic()
            result = await prober.probe("198.51.100.1")
        assert not result.answered
        assert result.detail is not None and "unreachable" in result.detail.lower()
        assert time.monotonic() - started < 0.5
    finally:
        prober.close()


@pytest.mark.root
async def test_icmp_bound_to_another_device_does_not_leak_through_loopback(netns):
    """Bound to sink0, a ping to 127.0.0.1 may not take lo: the binding is honoured."""
    on_sink = IcmpProber(monotonic=time.monotonic, device="sink0", timeout_s=0.3)
    on_lo = IcmpProber(monotonic=time.monotonic, device="lo", timeout_s=0.3)
    try:
        with inside(netns):
            results = await asyncio.gather(on_sink.probe("127.0.0.1"), on_lo.probe("127.0.0.1"))
        assert [r.answered for r in results] == [False, True]
    finally:
        on_sink.close()
        on_lo.close()


@pytest.mark.root
async def test_unprivileged_ping_socket_when_allowed(netns):
    subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            netns,
            "sh",
            "-c",
            "echo 0 2147483647 > /proc/sys/net/ipv4/ping_group_range",
        ],
        check=True,
    )
    prober = IcmpProber(monotonic=time.monotonic, timeout_s=1.0)
    try:
        with inside(netns):
            result = await prober.probe("127.0.0.1")
        assert prober.kind == "dgram"
        assert result.answered, result.detail
    finally:
        prober.close()


# -- SIP OPTIONS against a responder speaking real SIP -------------------------------------


class SipResponder(asyncio.DatagramProtocol):
    """A test double for an SBC: answers OPTIONS the way RFC 3261 §8.2.6 says.

    `mode`: answer | silent | drop-first | rewrite-branch | chatter (garbage and a 100
    Trying before the final reply).
    """

    def __init__(self, status: str = "200 OK", mode: str = "answer") -> None:
        self.status, self.mode = status, mode
        self.requests: list[str] = []
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        text = data.decode()
        self.requests.append(text)
        if self.mode == "silent" or (self.mode == "drop-first" and len(self.requests) == 1):
            return
        headers = dict(line.split(": ", 1) for line in text.split("\r\n")[1:] if ": " in line)
        via = headers["Via"].replace(";rport", f";rport={addr[1]};received={addr[0]}")
        if self.mode == "rewrite-branch":
            via = re.sub(r"branch=[^;]+", "branch=z9hG4bKalg0", via)

        def reply(status: str) -> bytes:
            return (
                f"SIP/2.0 {status}\r\nVia: {via}\r\nFrom: {headers['From']}\r\n"
                f"To: {headers['To']};tag=sbc1\r\nCall-ID: {headers['Call-ID']}\r\n"
                f"CSeq: {headers['CSeq']}\r\nAllow: INVITE, ACK, BYE, CANCEL, OPTIONS\r\n"
                "Content-Length: 0\r\n\r\n"
            ).encode()

        assert self.transport is not None
        if self.mode == "chatter":
            self.transport.sendto(b"\r\n\r\n", addr)  # a keep-alive, not a response
            self.transport.sendto(reply("100 Trying"), addr)
        self.transport.sendto(reply(self.status), addr)


@contextlib.asynccontextmanager
async def responder(status: str = "200 OK", mode: str = "answer"):
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(
        lambda: SipResponder(status, mode), local_addr=("127.0.0.1", 0)
    )
    try:
        yield protocol, transport.get_extra_info("sockname")[1]
    finally:
        transport.close()


async def sip_probe(status="200 OK", mode="answer", timeout_s=1.0, **kwargs):
    prober = SipOptionsProber(
        monotonic=time.monotonic, source_address="127.0.0.1", t1_s=0.1, **kwargs
    )
    try:
        async with responder(status, mode) as (sbc, port):
            result = await prober.probe("127.0.0.1", port, timeout_s)
        return result, sbc
    finally:
        prober.close()


async def test_sip_options_answered_and_parsed():
    result, sbc = await sip_probe()
    assert result.answered and result.method == "sip"
    assert result.sip_status == 200 and result.detail is None
    assert result.rtt_s is not None and result.rtt_s < 0.5
    assert result.target.startswith("127.0.0.1:")
    request = sbc.requests[0]
    assert request.startswith("OPTIONS sip:ping@127.0.0.1:")
    assert "\r\nMax-Forwards: 70\r\n" in request and "\r\nUser-Agent: cpe-agent\r\n" in request
    assert "From: <sip:cpe-agent@127.0.0.1>;tag=" in request


@pytest.mark.parametrize(
    ("status", "answered", "detail"),
    [
        ("404 Not Found", True, "SIP 404 Not Found"),
        ("503 Service Unavailable", True, "SIP 503 Service Unavailable"),
        ("408 Request Timeout", True, "SIP 408 Request Timeout"),
    ],
)
async def test_sip_error_replies_still_prove_the_path(status, answered, detail):
    result, _ = await sip_probe(status)
    assert (result.answered, result.detail) == (answered, detail)
    assert result.sip_status == int(status[:3])


async def test_sip_silence_is_a_timeout_after_retransmissions():
    started = time.monotonic()
    result, sbc = await sip_probe(mode="silent", timeout_s=0.5)
    assert not result.answered and result.detail == "timeout"
    assert 0.45 <= time.monotonic() - started < 1.0
    # Timer E: sends at 0, 0.1, 0.3 (T1 = 0.1 s, doubling) within 0.5 s.
    assert len(sbc.requests) == 3
    assert len(set(sbc.requests)) == 1  # a retransmission is the same request


async def test_sip_one_lost_datagram_is_recovered_by_retransmission():
    result, sbc = await sip_probe(mode="drop-first")
    assert result.answered and result.extra == {"retransmissions": "1"}
    assert len(sbc.requests) == 2


async def test_sip_reply_with_a_rewritten_branch_does_not_count():
    """A SIP ALG that mangles the Via makes SIP unusable: the probe must see that."""
    result, _ = await sip_probe(mode="rewrite-branch", timeout_s=0.4)
    assert not result.answered and result.detail == "timeout"


async def test_sip_garbage_and_provisional_replies_are_skipped():
    result, _ = await sip_probe(mode="chatter")
    assert result.answered and result.sip_status == 200


async def test_sip_unreachable_source_is_reported():
    prober = SipOptionsProber(monotonic=time.monotonic, source_address="192.0.2.200")
    result = await prober.probe("127.0.0.1", 5060, 0.2)
    prober.close()
    assert not result.answered and result.detail is not None
    assert result.detail.startswith("cannot send")


# -- the monitor on a fake clock ---------------------------------------------------------


class FakeIcmp:
    """Answers in 20 ms (clock time) while `answering`; otherwise times out."""

    def __init__(self, clock: ManualClock, answering: set[str]) -> None:
        self.clock, self.answering = clock, answering
        self.sent: list[tuple[float, str]] = []
        self.closed = False

    async def probe(self, target: str, timeout_s: float | None = None) -> ProbeResult:
        self.sent.append((self.clock.monotonic(), target))
        if target in self.answering:
            await self.clock.sleep(0.02)
            return ProbeResult(target, "icmp", True, rtt_s=0.02)
        await self.clock.sleep(timeout_s or 1.0)
        return ProbeResult(target, "icmp", False, detail="timeout")

    def close(self) -> None:
        self.closed = True


class FakeSip:
    def __init__(self, clock: ManualClock, answering: bool) -> None:
        self.clock, self.answering = clock, answering
        self.sent: list[float] = []

    async def probe(self, host: str, port: int = 5060, timeout_s: float | None = None):
        self.sent.append(self.clock.monotonic())
        if self.answering:
            await self.clock.sleep(0.03)
            return ProbeResult(f"{host}:{port}", "sip", True, rtt_s=0.03, sip_status=200)
        await self.clock.sleep(timeout_s or 4.0)
        return ProbeResult(f"{host}:{port}", "sip", False, detail="timeout")


async def advance(clock: ManualClock, seconds: float, step_s: float = 0.01) -> None:
    for _ in range(round(seconds / step_s)):
        clock.advance(step_s)
        for _ in range(6):
            await asyncio.sleep(0)


@contextlib.asynccontextmanager
async def running(monitor: Monitor):
    task = asyncio.create_task(monitor.run())
    await asyncio.sleep(0)
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def lab_monitor(clock, icmp, sip=None, **spec):
    seen: list[tuple[str, float, LinkAssessment]] = []
    link = LinkSpec(
        icmp_prober=icmp,
        icmp_targets=("192.0.2.10", "192.0.2.11"),
        policy=HealthPolicy(down_after_s=0.8),
        interval_s=0.2,
        sip_prober=sip,
        sip_targets=(("192.0.2.10", 5060),) if sip else (),
        **spec,
    )
    monitor = Monitor(clock, {"primary": link}, lambda r, a: seen.append((r, clock.monotonic(), a)))
    return monitor, seen


async def test_monitor_reports_a_healthy_link_up():
    clock = ManualClock()
    icmp = FakeIcmp(clock, {"192.0.2.10", "192.0.2.11"})
    monitor, seen = lab_monitor(clock, icmp)
    async with running(monitor):
        await advance(clock, 3.0)
    assert {role for role, _, _ in seen} == {"primary"}
    latest = monitor.latest("primary")
    assert latest is not None and latest.verdict is Verdict.UP, latest.reason
    assert latest.targets_up == 2 and latest.rtt_ms == pytest.approx(20.0)
    assert 14 <= len(icmp.sent) / 2 <= 16  # a round every 0.2 s
    assert icmp.closed  # run() closes its probers when cancelled


async def test_monitor_sees_a_blackhole_within_down_after_plus_an_interval():
    clock = ManualClock()
    icmp = FakeIcmp(clock, {"192.0.2.10", "192.0.2.11"})
    monitor, seen = lab_monitor(clock, icmp)
    async with running(monitor):
        await advance(clock, 3.05)
        blackhole = clock.monotonic()
        icmp.answering.clear()
        await advance(clock, 2.0)
    first_down = next(t for _, t, a in seen if a.verdict is Verdict.DOWN)
    assert first_down - blackhole <= 0.8 + 0.2 + 0.011  # + one clock step


async def test_carrier_loss_is_down_at_once_and_recovery_needs_answers():
    clock = ManualClock()
    icmp = FakeIcmp(clock, {"192.0.2.10", "192.0.2.11"})
    monitor, seen = lab_monitor(clock, icmp)
    async with running(monitor):
        await advance(clock, 3.0)
        before = len(seen)
        assessment = monitor.set_carrier("primary", False)
        assert assessment.verdict is Verdict.DOWN and "carrier" in assessment.reason
        assert seen[before][2] is assessment  # published at once, no probe round needed
        await advance(clock, 1.0)
        assert monitor.latest("primary").verdict is Verdict.DOWN
        assert monitor.set_carrier("primary", True).verdict is Verdict.UP


async def test_sparse_probing_and_a_change_of_interval_at_run_time():
    clock = ManualClock()
    icmp = FakeIcmp(clock, {"192.0.2.10", "192.0.2.11"})
    sip = FakeSip(clock, answering=True)
    monitor, _ = lab_monitor(clock, icmp, sip, sip_interval_s=5.0)
    monitor.set_interval("primary", 45.0)  # idle cellular: every probe costs plan bytes
    async with running(monitor):
        await advance(clock, 100.0, step_s=0.5)
        assert len(icmp.sent) == 2 * 3  # rounds at 0, 45, 90
        assert len(sip.sent) == 3  # SIP never more often than the pings
        monitor.set_interval("primary", 1.0)  # failover: watch closely
        await advance(clock, 0.05)
        assert len(icmp.sent) == 2 * 4  # the new cadence starts at once
        await advance(clock, 10.0, step_s=0.05)
        assert 2 * 13 <= len(icmp.sent) <= 2 * 15
        assert 4 <= len(sip.sent) <= 6  # every 5 s now
    with pytest.raises(ValueError, match="interval_s"):
        monitor.set_interval("primary", 0)
    with pytest.raises(ValueError, match="no link"):
        monitor.set_interval("lte", 1.0)


async def test_sip_unanswered_takes_the_link_down_for_voice():
    clock = ManualClock()
    icmp = FakeIcmp(clock, {"192.0.2.10", "192.0.2.11"})
    sip = FakeSip(clock, answering=False)
    monitor, _ = lab_monitor(clock, icmp, sip, sip_interval_s=2.0, sip_timeout_s=1.0)
    async with running(monitor):
        await advance(clock, 4.0, step_s=0.02)
        assert monitor.latest("primary").verdict is Verdict.UP  # SIP not judged yet
        await advance(clock, 4.0, step_s=0.02)
        latest = monitor.latest("primary")
        assert latest.verdict is Verdict.DOWN and "SIP" in latest.reason
        sip.answering = True
        await advance(clock, 2.5, step_s=0.02)
        assert monitor.latest("primary").verdict is Verdict.UP


async def test_a_failing_callback_does_not_stop_the_monitor():
    clock = ManualClock()
    icmp = FakeIcmp(clock, {"192.0.2.10"})
    calls = []

    def callback(role, assessment):
        calls.append(assessment)
        raise RuntimeError("boom")

    link = LinkSpec(icmp_prober=icmp, icmp_targets=("192.0.2.10",), interval_s=0.2)
    monitor = Monitor(clock, {"cellular": link}, callback)
    async with running(monitor):
        await advance(clock, 1.0)
    assert len(calls) >= 5 and len(icmp.sent) >= 5
