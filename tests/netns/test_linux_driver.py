"""LinuxRouterDriver against a real kernel, in throwaway network namespaces.

Three namespaces per test, named `cpt-<random>-...` so they never meet the lab's:

    lan  eth0 100.64.1.10/24 --- lan0 100.64.1.1/24  cpe
    cpe  wan0 198.51.100.2/30 --- isp0 198.51.100.1/30  far  (the primary)
    cpe  lte0 100.64.100.2/24 --- carrier0 100.64.100.1/24  far  (the LTE side)
    far  lo 203.0.113.10 (the SBC), 203.0.113.80 (a web host)

`cpe` forwards, routes by default via wan0 and masquerades on wan0 like a customer's
router. `far` echoes UDP and says which source address each datagram came from: the
customer's masquerade shows 198.51.100.2 (primary), the agent's shows 100.64.100.2 (LTE).
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from drivers.errors import NeedsHumanError, RetryableError
from drivers.router.base import RouterDriver
from drivers.router.linux.driver import LinuxRouterDriver
from drivers.types import LinkEvent, VoipPath, VoipPolicy

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to build network namespaces"),
]

PEER = str(Path(__file__).with_name("udp_peer.py"))
SBC, WEB = "203.0.113.10", "203.0.113.80"
VIA_PRIMARY, VIA_LTE = "198.51.100.2", "100.64.100.2"
SERVED_PORTS = (5060, 8080, 9999, 10002, 10004)
POLICY = VoipPolicy(
    primary_interface="wan0",
    cellular_interface="lte0",
    cellular_gateway="100.64.100.1",
    lan_interfaces=("lan0",),
    voip_prefixes=(f"{SBC}/32",),
    agent_prefixes=("203.0.113.53/32",),
)


def run(*argv: str, check: bool = True, stdin: str | None = None) -> str:
    result = subprocess.run(
        argv, input=stdin, capture_output=True, text=True, timeout=10, check=False
    )
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} failed: {result.stderr.strip()}")
    return result.stdout


@dataclass
class Net:
    lan: str
    cpe: str
    far: str

    def ns(self, name: str, *argv: str, check: bool = True, stdin: str | None = None) -> str:
        return run("ip", "netns", "exec", name, *argv, check=check, stdin=stdin)

    def send(self, dst: str, port: int, *options: str) -> dict[str, Any]:
        out = self.ns(self.lan, sys.executable, PEER, "send", dst, str(port), *options)
        return json.loads(out)


def build_net(prefix: str) -> Net:
    net = Net(f"{prefix}lan", f"{prefix}cpe", f"{prefix}far")
    for name in (net.lan, net.cpe, net.far):
        run("ip", "netns", "add", name)
        for key in ("all", "default"):
            net.ns(name, "sysctl", "-qw", f"net.ipv6.conf.{key}.disable_ipv6=1")
        net.ns(name, "ip", "link", "set", "lo", "up")
    pairs = (
        (net.lan, "eth0", "100.64.1.10/24", net.cpe, "lan0", "100.64.1.1/24"),
        (net.cpe, "wan0", "198.51.100.2/30", net.far, "isp0", "198.51.100.1/30"),
        (net.cpe, "lte0", "100.64.100.2/24", net.far, "carrier0", "100.64.100.1/24"),
    )
    for ns_a, if_a, addr_a, ns_b, if_b, addr_b in pairs:
        run("ip", "link", "add", if_a, "netns", ns_a, "type", "veth", "peer", if_b, "netns", ns_b)
        for ns, ifname, address in ((ns_a, if_a, addr_a), (ns_b, if_b, addr_b)):
            net.ns(ns, "ip", "addr", "add", address, "dev", ifname)
            net.ns(ns, "ip", "link", "set", ifname, "up")
    net.ns(net.lan, "ip", "route", "add", "default", "via", "100.64.1.1")
    net.ns(net.cpe, "sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv4.conf.all.rp_filter=2")
    net.ns(net.cpe, "ip", "route", "add", "default", "via", "198.51.100.1")
    customer = (
        "table ip customer_nat {\n chain postrouting {\n"
        '  type nat hook postrouting priority srcnat; oifname "wan0" masquerade\n }\n}\n'
    )
    net.ns(net.cpe, "nft", "-f", "-", stdin=customer)
    for address in (SBC, WEB, "203.0.113.53"):
        net.ns(net.far, "ip", "addr", "add", f"{address}/32", "dev", "lo")
    return net


@pytest.fixture
def net() -> Iterator[Net]:
    prefix = f"cpt-{secrets.token_hex(3)}-"
    try:
        yield build_net(prefix)
    finally:
        for name in ("lan", "cpe", "far"):
            run("ip", "netns", "del", f"{prefix}{name}", check=False)


class Far:
    """The far end's UDP echo server; every datagram it saw, as {src, sport, dport}."""

    def __init__(self, net: Net) -> None:
        argv = ["ip", "netns", "exec", net.far, sys.executable, PEER, "serve", f"{SBC},{WEB}"]
        argv += [str(p) for p in SERVED_PORTS] + ["--deadline-s", "60"]
        self.process = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
        self.seen: list[dict[str, Any]] = []
        self._lines: queue.Queue[dict[str, Any]] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        assert "ready" in self._lines.get(timeout=5)

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.put(json.loads(line))

    def wait_for(self, match: Callable[[dict[str, Any]], bool], timeout_s: float = 3.0) -> dict:
        deadline = time.monotonic() + timeout_s
        while True:
            for record in self.seen:
                if match(record):
                    return record
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"far never saw the datagram; it saw {self.seen}")
            try:
                self.seen.append(self._lines.get(timeout=left))
            except queue.Empty:
                continue

    def source_of(self, port: int, sport: int) -> str:
        record = self.wait_for(lambda r: r["dport"] == port and r["sport"] == sport)
        return record["src"]

    def stop(self) -> None:
        self.process.kill()
        self.process.wait(timeout=5)


@pytest.fixture
def far(net: Net) -> Iterator[Far]:
    server = Far(net)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def driver(net: Net) -> AsyncIterator[LinuxRouterDriver]:
    router = LinuxRouterDriver(netns=net.cpe, interfaces=("lan0", "wan0", "lte0"))
    await router.open()
    try:
        yield router
    finally:
        await router.close()


def path_of(net: Net, far: Far, dst: str, port: int, *options: str) -> str:
    """Send one datagram from the LAN host; say which link it reached `far` by."""
    sent = net.send(dst, port, *options)
    # Masquerade keeps the source port unless it clashes, which it cannot here.
    source = far.source_of(port, sent["sport"])
    return {VIA_PRIMARY: "primary", VIA_LTE: "lte"}[source]


async def eventually(check: Callable[[], Any], timeout_s: float = 3.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s} s: {check}")
        await asyncio.sleep(0.05)


def snapshot(net: Net) -> tuple[str, str, str]:
    return (
        net.ns(net.cpe, "nft", "list", "ruleset"),
        net.ns(net.cpe, "ip", "rule"),
        net.ns(net.cpe, "ip", "route", "show", "table", "all"),
    )


# --- tests ----------------------------------------------------------------------------


async def test_driver_is_a_router_driver_and_open_checks(net: Net) -> None:
    assert isinstance(LinuxRouterDriver(netns=net.cpe), RouterDriver)
    with pytest.raises(NeedsHumanError, match="nope0"):
        await LinuxRouterDriver(netns=net.cpe, interfaces=("lte0", "nope0")).open()
    with pytest.raises(NeedsHumanError, match="namespace"):
        await LinuxRouterDriver(netns=f"{net.cpe}-missing").open()


async def test_apply_installs_in_sync_and_twice_changes_nothing(
    net: Net, driver: LinuxRouterDriver
) -> None:
    await driver.apply_policy(POLICY)
    state = await driver.read_state()
    assert state.policy_installed
    assert state.drift == ()
    assert state.voip_path is VoipPath.PRIMARY
    before = snapshot(net)
    assert "table inet cpe_agent" in before[0]
    assert "4241:\tfrom 100.64.100.2 lookup 4241 proto 241" in before[1]
    assert "default via 100.64.100.1 dev lte0 table 4241 proto 241" in before[2]
    await driver.apply_policy(POLICY)
    assert snapshot(net) == before


async def test_switch_moves_voip_and_only_voip(
    net: Net, far: Far, driver: LinuxRouterDriver
) -> None:
    await driver.apply_policy(POLICY)
    assert path_of(net, far, SBC, 5060) == "primary"

    await driver.set_voip_path(VoipPath.CELLULAR)
    await driver.set_voip_path(VoipPath.CELLULAR)  # idempotent
    assert (await driver.read_state()).voip_path is VoipPath.CELLULAR
    assert path_of(net, far, SBC, 5060) == "lte"  # SIP
    assert path_of(net, far, SBC, 10002) == "lte"  # RTP
    assert path_of(net, far, SBC, 9999, "--tos", "0xb8") == "lte"  # DSCP EF
    assert path_of(net, far, SBC, 9999) == "primary"  # same host, not VoIP
    assert path_of(net, far, WEB, 8080) == "primary"  # not the provider
    assert path_of(net, far, WEB, 5060) == "primary"  # SIP port, but not the provider

    await driver.set_voip_path(VoipPath.PRIMARY)
    await driver.set_voip_path(VoipPath.PRIMARY)
    assert (await driver.read_state()).voip_path is VoipPath.PRIMARY
    assert path_of(net, far, SBC, 5060) == "primary"


async def test_non_voip_forced_onto_lte_is_dropped_and_counted(
    net: Net, far: Far, driver: LinuxRouterDriver
) -> None:
    await driver.apply_policy(POLICY)
    await driver.set_voip_path(VoipPath.CELLULAR)
    # The primary is gone and something (a DHCP client on the modem) routes all via LTE.
    net.ns(net.cpe, "ip", "route", "replace", "default", "via", "100.64.100.1", "dev", "lte0")
    assert (await driver.read_state()).blocked_packets == 0

    sent = net.send(WEB, 8080, "--count", "3")
    state = await eventually(_blocked_at_least(driver, 3))
    assert state.blocked_bytes >= 3 * (28 + 32)
    assert not [r for r in far.seen if r["dport"] == 8080 and r["sport"] == sent["sport"]]
    assert path_of(net, far, SBC, 5060) == "lte"  # VoIP still passes

    # Repairing a hand-edited table keeps the counter's history.
    net.ns(net.cpe, "nft", "add", "rule", "inet", "cpe_agent", "cellular_guard_forward", "accept")
    assert (await driver.read_state()).drift
    await driver.apply_policy(POLICY)
    repaired = await driver.read_state()
    assert repaired.drift == ()
    assert repaired.blocked_packets >= 3


def _blocked_at_least(driver: LinuxRouterDriver, packets: int) -> Callable[[], Any]:
    async def check() -> Any:
        state = await driver.read_state()
        return state if state.blocked_packets >= packets else None

    return check


async def test_flush_deletes_only_voip_conntrack_entries(
    net: Net, far: Far, driver: LinuxRouterDriver
) -> None:
    await driver.apply_policy(POLICY)
    for dst, port in ((SBC, 5060), (SBC, 10002), (WEB, 8080), (SBC, 9999)):
        path_of(net, far, dst, port)

    def flows() -> set[tuple[str, int]]:
        """(original destination, port) of each UDP conntrack entry in the cpe."""
        found = set()
        for line in net.ns(net.cpe, "conntrack", "-L", "-p", "udp", check=False).splitlines():
            fields: dict[str, str] = {}
            for key, _, value in (f.partition("=") for f in line.split() if "=" in f):
                fields.setdefault(key, value)  # the first of each is the original direction
            if "dst" in fields:
                found.add((fields["dst"], int(fields["dport"])))
        return found

    assert flows() == {(SBC, 5060), (SBC, 10002), (WEB, 8080), (SBC, 9999)}
    assert await driver.flush_voip_conntrack() == 2
    # The web flow stays, and so does the SBC flow that is neither SIP nor RTP.
    assert flows() == {(WEB, 8080), (SBC, 9999)}
    assert await driver.flush_voip_conntrack() == 0


async def test_active_calls_counts_recent_rtp(
    net: Net, far: Far, driver: LinuxRouterDriver
) -> None:
    await driver.apply_policy(POLICY)
    assert await driver.active_calls() == 0
    path_of(net, far, SBC, 5060)  # SIP, not a call
    # Two-way RTP for over 2 s is what makes the kernel mark a UDP flow assured.
    argv = ["ip", "netns", "exec", net.lan, sys.executable, PEER, "send", SBC, "10004"]
    argv += ["--sport", "40004", "--duration-s", "4", "--interval-s", "0.05"]
    sender = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
    try:
        assert await eventually(driver.active_calls, timeout_s=6) == 1
    finally:
        sender.kill()
        sender.wait(timeout=5)


async def test_drift_is_reported_and_apply_repairs_it(net: Net, driver: LinuxRouterDriver) -> None:
    await driver.apply_policy(POLICY)
    await driver.set_voip_path(VoipPath.CELLULAR)

    net.ns(net.cpe, "ip", "rule", "del", "priority", "4241")
    net.ns(net.cpe, "ip", "rule", "del", "priority", "4240")
    net.ns(net.cpe, "ip", "route", "flush", "table", "4241")
    state = await driver.read_state()
    assert state.voip_path is VoipPath.PRIMARY  # the switch rule went
    assert "the cellular routing table 4241 has no default route" in state.drift
    assert any("from 100.64.100.2/32" in d and "missing" in d for d in state.drift)

    await driver.apply_policy(POLICY)
    assert (await driver.read_state()).drift == ()
    net.ns(net.cpe, "nft", "delete", "table", "inet", "cpe_agent")
    state = await driver.read_state()
    assert not state.policy_installed
    assert "the nftables table inet cpe_agent is missing" in state.drift

    await driver.apply_policy(POLICY)
    await driver.set_voip_path(VoipPath.CELLULAR)
    state = await driver.read_state()
    assert state.policy_installed and state.drift == ()
    assert state.voip_path is VoipPath.CELLULAR


async def test_a_downed_cellular_interface_is_retried_then_repaired(
    net: Net, driver: LinuxRouterDriver
) -> None:
    await driver.apply_policy(POLICY)
    await driver.set_voip_path(VoipPath.CELLULAR)
    # Taking an interface down makes the kernel drop its routes (a modem reset does this).
    net.ns(net.cpe, "ip", "link", "set", "lte0", "down")
    state = await driver.read_state()
    assert "the cellular routing table 4241 has no default route" in state.drift
    assert state.voip_path is VoipPath.CELLULAR  # the switch stays; VoIP falls through to main
    with pytest.raises(RetryableError, match="the agent retries"):
        await driver.apply_policy(POLICY)

    net.ns(net.cpe, "ip", "link", "set", "lte0", "up")
    await driver.apply_policy(POLICY)
    state = await driver.read_state()
    assert state.drift == () and state.voip_path is VoipPath.CELLULAR


async def test_remove_all_leaves_the_customer_config(net: Net, driver: LinuxRouterDriver) -> None:
    customer_before = net.ns(net.cpe, "nft", "list", "table", "ip", "customer_nat")
    main_before = net.ns(net.cpe, "ip", "route", "show", "table", "main")
    rules_before = net.ns(net.cpe, "ip", "rule")
    await driver.apply_policy(POLICY)
    await driver.set_voip_path(VoipPath.CELLULAR)

    # A fresh process (no policy in memory) finds the agent's items by their markers.
    fresh = LinuxRouterDriver(netns=net.cpe)
    try:
        assert await fresh.remove_all() == 4  # table, switch rule, source rule, route
        assert await fresh.remove_all() == 0
    finally:
        await fresh.close()
    state = await driver.read_state()
    assert not state.policy_installed and state.voip_path is None
    assert net.ns(net.cpe, "nft", "list", "table", "ip", "customer_nat") == customer_before
    assert net.ns(net.cpe, "ip", "route", "show", "table", "main") == main_before
    assert net.ns(net.cpe, "ip", "rule") == rules_before
    assert net.ns(net.cpe, "ip", "route", "show", "table", "4241") == ""


async def test_link_status_and_counters(net: Net, far: Far, driver: LinuxRouterDriver) -> None:
    status = await driver.link_status("lte0")
    assert status.carrier_up and status.addresses == ("100.64.100.2/24",)
    assert not (await driver.link_status("gone0")).carrier_up

    await driver.apply_policy(POLICY)
    await driver.set_voip_path(VoipPath.CELLULAR)
    path_of(net, far, SBC, 10002, "--sport", "40002")  # resolves ARP first
    before = await driver.interface_counters("lte0")
    net.send(SBC, 10002, "--sport", "40002", "--count", "5", "--size", "1000")

    async def five_more() -> Any:
        after = await driver.interface_counters("lte0")
        return after if after.tx_packets - before.tx_packets >= 5 else None

    after = await eventually(five_more)
    assert after.counts_frames and after.width_bits == 64
    assert after.boot_id == before.boot_id
    # Each frame: 14 Ethernet + 20 IP + 8 UDP + 1000 payload; no FCS.
    assert (after.tx_packets - before.tx_packets, after.tx_bytes - before.tx_bytes) == (5, 5210)


async def test_watch_carrier_reports_loss_promptly(net: Net, driver: LinuxRouterDriver) -> None:
    events: asyncio.Queue[LinkEvent] = asyncio.Queue()

    async def consume() -> None:
        async for event in driver.watch_carrier():
            await events.put(event)

    task = asyncio.create_task(consume())
    try:
        # Prove the watch is live (bound) by toggling a spare veth until it reports.
        net.ns(net.cpe, "ip", "link", "add", "probe0", "type", "veth", "peer", "probe1")
        net.ns(net.cpe, "ip", "link", "set", "probe1", "up")
        up = False
        for _ in range(40):
            up = not up
            net.ns(net.cpe, "ip", "link", "set", "probe0", "up" if up else "down")
            try:
                await asyncio.wait_for(_next_for(events, "probe0"), 0.25)
                break
            except TimeoutError:
                continue
        else:
            raise AssertionError("the carrier watch never reported the probe interface")

        started = time.monotonic()
        net.ns(net.far, "ip", "link", "set", "carrier0", "down")
        event = await asyncio.wait_for(_next_for(events, "lte0"), 2.0)
        assert event == LinkEvent("lte0", False)
        latency_s = time.monotonic() - started
        print(f"carrier-down latency {latency_s * 1000:.0f} ms")
        net.ns(net.far, "ip", "link", "set", "carrier0", "up")
        event = await asyncio.wait_for(_next_for(events, "lte0"), 2.0)
        assert event == LinkEvent("lte0", True)
        assert latency_s < 2.0
        # An interface that vanishes (a USB modem unplugged) has lost its carrier too.
        net.ns(net.cpe, "ip", "link", "del", "lte0")
        event = await asyncio.wait_for(_next_for(events, "lte0"), 2.0)
        assert event == LinkEvent("lte0", False)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def _next_for(events: asyncio.Queue[LinkEvent], interface: str) -> LinkEvent:
    while True:
        event = await events.get()
        if event.interface == interface:
            return event
