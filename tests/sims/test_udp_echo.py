"""The UDP echo responder (hil/sims/udp_echo.py) against RFC 862: the data received goes
back exactly, in one answering datagram, to the address and port it came from."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from hil.sims.udp_echo import UdpEchoResponder

REPO_ROOT = Path(__file__).resolve().parents[2]
WAIT_S = 2.0


@pytest.fixture
async def echo() -> AsyncIterator[UdpEchoResponder]:
    async with UdpEchoResponder("127.0.0.1", 0) as responder:
        yield responder


@pytest.fixture
def client() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    yield sock
    sock.close()


async def _exchange(sock: socket.socket, data: bytes, to: tuple[str, int]) -> tuple[bytes, tuple]:
    loop = asyncio.get_running_loop()
    await loop.sock_sendto(sock, data, to)
    return await asyncio.wait_for(loop.sock_recvfrom(sock, 70_000), WAIT_S)


PAYLOADS = [
    pytest.param(b"", id="empty"),
    pytest.param(b"\x00", id="one NUL"),
    pytest.param(bytes(range(256)), id="every byte value"),
    pytest.param(b"\x80\x00" + os.urandom(170), id="RTP-sized"),
    pytest.param(os.urandom(1472), id="full 1500 B MTU"),
    pytest.param(os.urandom(9000), id="larger than an MTU"),
]


@pytest.mark.parametrize("data", PAYLOADS)
async def test_the_data_comes_back_exactly_from_where_it_was_sent(
    echo: UdpEchoResponder, client: socket.socket, data: bytes
) -> None:
    reply, source = await _exchange(client, data, echo.address)
    assert reply == data
    assert source[:2] == echo.address


async def test_each_sender_gets_its_own_answers_at_its_own_port(echo: UdpEchoResponder) -> None:
    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(3)]
    try:
        for i, sock in enumerate(socks):
            sock.bind(("127.0.0.1", 0))
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_sendto(sock, f"from {i}".encode(), echo.address)
        for i, sock in enumerate(socks):
            reply, _ = await asyncio.wait_for(
                asyncio.get_running_loop().sock_recvfrom(sock, 100), WAIT_S
            )
            assert reply == f"from {i}".encode()
    finally:
        for sock in socks:
            sock.close()


async def test_one_answer_per_datagram(echo: UdpEchoResponder, client: socket.socket) -> None:
    loop = asyncio.get_running_loop()
    for i in range(5):
        await loop.sock_sendto(client, b"%d" % i, echo.address)
    await loop.sock_sendto(client, b"end", echo.address)
    replies = [
        (await asyncio.wait_for(loop.sock_recvfrom(client, 100), WAIT_S))[0] for _ in range(6)
    ]
    # Datagrams on loopback keep their order: one answer each, then the marker's.
    assert replies == [b"0", b"1", b"2", b"3", b"4", b"end"]
    assert (echo.received, echo.answered, echo.dropped) == (6, 6, 0)


async def test_knobs_drop_duplicate_delay(echo: UdpEchoResponder, client: socket.socket) -> None:
    loop = asyncio.get_running_loop()
    echo.drop_every = 2
    for i in range(5):
        await loop.sock_sendto(client, b"%d" % i, echo.address)
    replies = [
        (await asyncio.wait_for(loop.sock_recvfrom(client, 100), WAIT_S))[0] for _ in range(3)
    ]
    assert replies == [b"0", b"2", b"4"]  # the 2nd and 4th received were dropped
    assert (echo.received, echo.answered, echo.dropped) == (5, 3, 2)
    echo.drop_every = 0
    echo.duplicate = True
    await loop.sock_sendto(client, b"twice", echo.address)
    replies = [
        (await asyncio.wait_for(loop.sock_recvfrom(client, 100), WAIT_S))[0] for _ in range(2)
    ]
    assert replies == [b"twice", b"twice"]
    echo.duplicate = False
    echo.delay_s = 0.1
    started = loop.time()
    reply, _ = await _exchange(client, b"late", echo.address)
    assert reply == b"late" and loop.time() - started >= 0.1


async def test_stop_releases_the_port() -> None:
    responder = UdpEchoResponder("127.0.0.1", 0)
    host, port = await responder.start()
    await responder.stop()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((host, port))  # free again


def test_command_line_prints_ready_echoes_and_exits_cleanly_on_sigterm() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "hil.sims.udp_echo", "--bind", "127.0.0.1", "--port", "0"],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        ready = proc.stdout.readline().strip()
        assert ready.startswith("udp-echo listening on 127.0.0.1:"), ready
        port = int(ready.rsplit(":", 1)[1])
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(WAIT_S)
            sock.sendto(b"ping", ("127.0.0.1", port))
            reply, source = sock.recvfrom(100)
        assert (reply, source) == (b"ping", ("127.0.0.1", port))
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=5)
        assert proc.returncode == 0, err
        assert "1 received, 1 answered, 0 dropped" in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_command_line_says_when_it_cannot_listen() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "hil.sims.udp_echo", "--bind", "192.0.2.99", "--port", "0"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    assert done.returncode == 1
    assert "cannot listen on 192.0.2.99:0" in done.stderr
