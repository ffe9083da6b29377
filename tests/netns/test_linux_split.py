"""The Linux driver's split counters against a real kernel: VoIP and the agent's own
bytes by the cellular link, both ways, as IP bytes.

The namespaces are tests/netns/test_linux_driver.py's (lan, cpe, far; built by its
helper under a prefix of our own). Traffic is sent one datagram at a time and each echo
is waited for, so when a sender returns every byte it caused has crossed the link and
been counted: no waiting on time.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator

import pytest

from drivers.router.linux.driver import LinuxRouterDriver
from drivers.types import VoipPath
from tests.netns.test_linux_driver import PEER, POLICY, SBC, WEB, Net, build_net, run

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to build network namespaces"),
]

AGENT_SERVER = "203.0.113.53"  # POLICY.agent_prefixes
#: IPv4 (20) + UDP (8) header bytes per datagram.
UDP_IP_OVERHEAD = 28
#: How far the counters may be from the expected IP bytes.
TOLERANCE_BYTES = 300

#: Send COUNT datagrams of SIZE bytes to DST:PORT, each after the previous one's echo.
ECHO_CLIENT = """
import json, socket, sys
dst, port, count, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.settimeout(3.0)
echoed = 0
for _ in range(count):
    sock.sendto(b"v" * size, (dst, port))
    data, _ = sock.recvfrom(65535)
    echoed += len(data) == size
print(json.dumps({"echoed": echoed}))
"""


@pytest.fixture
def net() -> Iterator[Net]:
    prefix = f"cps-{secrets.token_hex(3)}-"
    try:
        yield build_net(prefix)
    finally:
        for name in ("lan", "cpe", "far"):
            run("ip", "netns", "del", f"{prefix}{name}", check=False)


@pytest.fixture
def echo(net: Net) -> Iterator[None]:
    """A UDP echo on the far side for the SBC, a web host and the agent's server."""
    argv = ["ip", "netns", "exec", net.far, sys.executable, PEER, "serve"]
    argv += [f"{SBC},{WEB},{AGENT_SERVER}", "5060", "8080", "10002", "--deadline-s", "60"]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        assert "ready" in process.stdout.readline()
        yield
    finally:
        process.kill()
        process.wait(timeout=5)


@pytest.fixture
async def driver(net: Net) -> AsyncIterator[LinuxRouterDriver]:
    router = LinuxRouterDriver(netns=net.cpe, interfaces=("lan0", "wan0", "lte0"))
    await router.open()
    try:
        yield router
    finally:
        await router.close()


def exchange(net: Net, namespace: str, dst: str, port: int, count: int, size: int) -> int:
    """Datagrams sent and echoed; returns the IP bytes that crossed each link (both ways)."""
    out = net.ns(namespace, sys.executable, "-c", ECHO_CLIENT, dst, str(port), str(count),
                 str(size))  # fmt: skip
    assert json.loads(out)["echoed"] == count
    return 2 * count * (size + UDP_IP_OVERHEAD)


async def test_voice_and_agent_bytes_on_lte_are_counted_apart(
    net: Net, echo: None, driver: LinuxRouterDriver
) -> None:
    await driver.apply_policy(POLICY)
    state = await driver.read_state()
    assert state.drift == ()
    voice0, agent0 = state.voice_bytes, state.agent_bytes
    assert voice0 is not None and agent0 is not None

    # On the primary nothing crosses LTE: VoIP and the agent's traffic count nothing.
    exchange(net, net.lan, SBC, 10002, 5, 160)
    exchange(net, net.cpe, AGENT_SERVER, 5060, 5, 100)
    state = await driver.read_state()
    assert (state.voice_bytes, state.agent_bytes) == (voice0, agent0)

    await driver.set_voip_path(VoipPath.CELLULAR)
    voice = exchange(net, net.lan, SBC, 10002, 50, 160)  # RTP, G.711 at 20 ms
    voice += exchange(net, net.lan, SBC, 5060, 4, 600)  # SIP
    agent = exchange(net, net.cpe, AGENT_SERVER, 5060, 30, 250)  # the agent's own
    exchange(net, net.lan, WEB, 8080, 5, 100)  # the customer's: by the primary
    state = await driver.read_state()
    assert state.voice_bytes is not None and state.agent_bytes is not None
    assert abs(state.voice_bytes - voice0 - voice) <= TOLERANCE_BYTES, (state, voice)
    assert abs(state.agent_bytes - agent0 - agent) <= TOLERANCE_BYTES, (state, agent)

    # A re-apply that replaces the table (a hand edit repaired) keeps the counts.
    net.ns(net.cpe, "nft", "add", "rule", "inet", "cpe_agent", "cellular_guard_forward", "accept")
    assert (await driver.read_state()).drift
    await driver.apply_policy(POLICY)
    repaired = await driver.read_state()
    assert repaired.drift == ()
    assert repaired.voice_bytes == state.voice_bytes
    assert repaired.agent_bytes == state.agent_bytes

    more = exchange(net, net.lan, SBC, 10002, 10, 160)
    after = await driver.read_state()
    assert after.voice_bytes is not None and state.voice_bytes is not None
    assert abs(after.voice_bytes - state.voice_bytes - more) <= TOLERANCE_BYTES


async def test_without_the_table_the_split_is_unknown(net: Net, driver: LinuxRouterDriver) -> None:
    state = await driver.read_state()
    assert not state.policy_installed
    assert (state.voice_bytes, state.agent_bytes) == (None, None)
