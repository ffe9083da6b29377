"""Harnesses: one per kind of router the shared contract suite runs against.

A harness builds a router (the RouterOS simulator, a throwaway set of Linux network
namespaces, or a real MikroTik named by an operator), makes drivers for it, and does to
it what a person or the network would: change the agent's config by hand, start flows,
send traffic, pull a cable. What a harness cannot do (a real router has no side channel)
it skips with the reason.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import sys
import time
from collections.abc import Callable
from typing import Any

import pytest

from drivers.router.base import RouterDriver
from drivers.types import VoipPolicy
from hil.rigs.routeros import RigConfig
from hil.sims.routeros import RouterOSSim

SBC, WEB = "203.0.113.10", "203.0.113.80"
USER, PASSWORD = "agent", "s3cret"
#: Print fields that move by themselves (counters, timers), left out of comparisons.
VOLATILE = frozenset({
    "bytes", "packets", "timeout", "uptime", "rx-byte", "tx-byte", "rx-packet", "tx-packet",
    "rx-drop", "tx-drop", "tx-queue-drop", "rx-error", "tx-error", "free-memory", "cpu-load",
    "last-logged-in", "creation-time",
})
VOLATILE_MENUS = frozenset({"/ip/firewall/connection", "/user/active", "/system/resource"})


def routeros_policy(cellular: str = "ether10", gateway: str | None = "192.168.5.1",
                    lan: str = "bridge", primary: str = "ether1") -> VoipPolicy:
    return VoipPolicy(
        primary_interface=primary,
        cellular_interface=cellular,
        cellular_gateway=gateway,
        lan_interfaces=(lan,),
        voip_prefixes=(f"{SBC}/32", "203.0.113.96/28"),
        agent_prefixes=("203.0.113.53/32",),
        cellular_probe_port=5099,
        primary_probe_port=5098,
    )


def is_agents(item: dict[str, str]) -> bool:
    return item.get("comment", "").startswith("cpe-agent:")


def untagged(snapshot: dict[str, list[dict[str, str]]]) -> dict[str, list[dict[str, str]]]:
    """A simulator snapshot with the agent's items and everything volatile left out; the
    SIP helper's `disabled` too (the agent turns it off on purpose, and says so)."""
    out = {}
    for menu, items in snapshot.items():
        if menu in VOLATILE_MENUS:
            continue
        kept = []
        for item in items:
            if is_agents(item):
                continue
            row = {k: v for k, v in item.items() if k not in VOLATILE}
            if menu == "/ip/firewall/service-port" and row.get("name") == "sip":
                row.pop("disabled", None)
            kept.append(row)
        out[menu] = kept
    return out


def stable(snapshot: dict[str, list[dict[str, str]]]) -> dict[str, list[dict[str, str]]]:
    return {menu: [{k: v for k, v in item.items() if k not in VOLATILE} for item in items]
            for menu, items in snapshot.items() if menu not in VOLATILE_MENUS}


class Harness:
    name = "abstract"
    policy: VoipPolicy
    cellular: str
    cellular_address: str

    def __init__(self) -> None:
        self._drivers: list[RouterDriver] = []

    async def driver(self) -> RouterDriver:
        made = self.make_driver()
        self._drivers.append(made)
        await made.open()
        return made

    def make_driver(self) -> RouterDriver:
        raise NotImplementedError

    async def customer_config(self) -> Any:
        raise NotImplementedError

    async def whole_config(self) -> Any:
        raise NotImplementedError

    async def tamper(self) -> None:
        raise NotImplementedError

    async def start_flows(self) -> None:
        pytest.skip(f"{self.name}: cannot create connection-tracking entries")

    async def flows(self) -> set[tuple[str, int]]:
        raise NotImplementedError

    async def cellular_traffic(self) -> None:
        pytest.skip(f"{self.name}: cannot send traffic through the router")

    async def set_carrier(self, up: bool) -> None:
        pytest.skip(f"{self.name}: cannot pull a cable")

    async def set_sip_helper(self, on: bool) -> None:
        """Turn the router's SIP helper on or off as its owner would (not the agent)."""
        pytest.skip(f"{self.name}: cannot turn the router's SIP helper on or off")

    async def close(self) -> None:
        for made in self._drivers:
            await made.close()


# --- the RouterOS simulator ---------------------------------------------------------------


class RouterOSSimHarness(Harness):
    def __init__(self, profile: str, model: str = "RB2011") -> None:
        super().__init__()
        self.name = f"routeros-{profile}"
        self.sim = RouterOSSim(profile=profile, model=model, user=USER, password=PASSWORD,
                               ping_time_scale=0.02)
        self.sim.start()
        self.policy = routeros_policy()
        self.cellular = "ether10"
        self.cellular_address = "192.168.5.2/24"

    def make_driver(self) -> RouterDriver:
        from drivers.router.routeros.driver import RouterOSDriver

        host, port = self.sim.address
        return RouterOSDriver(host=host, port=port, username=USER, password=PASSWORD,
                              plain_api=True, timeout_s=3.0, backoff_min_s=0.01,
                              backoff_max_s=0.05)

    async def customer_config(self) -> Any:
        return untagged(self.sim.snapshot())

    async def whole_config(self) -> Any:
        return stable(self.sim.snapshot())

    async def tamper(self) -> None:
        """A person at the console disables one of the agent's rules and deletes another."""
        db = self.sim.db
        mangle = next(i for i in self.sim.items("/ip/firewall/mangle")
                      if i.get("comment", "").startswith("cpe-agent:mark-rtp"))
        db.set("/ip/firewall/mangle", {".id": mangle[".id"], "disabled": "true"})
        nat = next(i for i in self.sim.items("/ip/firewall/nat") if is_agents(i))
        db.remove("/ip/firewall/nat", {".id": nat[".id"]})

    async def start_flows(self) -> None:
        for src, dst, proto in (("192.168.88.10:5060", f"{SBC}:5060", "udp"),
                                ("192.168.88.10:40002", f"{SBC}:10002", "udp"),
                                ("192.168.88.10:40080", f"{WEB}:8080", "udp"),
                                ("192.168.88.10:40099", f"{SBC}:9999", "udp")):
            self.sim.add_connection(src, dst, protocol=proto)

    async def flows(self) -> set[tuple[str, int]]:
        out = set()
        for entry in self.sim.connections():
            host, _, port = entry["dst-address"].rpartition(":")
            out.add((host, int(port)))
        return out

    async def cellular_traffic(self) -> None:
        self.sim.add_traffic(self.cellular, rx_bytes=5000, tx_bytes=5210, rx_packets=5,
                             tx_packets=5)

    async def set_carrier(self, up: bool) -> None:
        self.sim.set_running(self.cellular, up)

    async def set_sip_helper(self, on: bool) -> None:
        sip = next(i for i in self.sim.items("/ip/firewall/service-port") if i["name"] == "sip")
        self.sim.db.set("/ip/firewall/service-port",
                        {".id": sip[".id"], "disabled": "false" if on else "true"})

    async def close(self) -> None:
        await super().close()
        self.sim.stop()


# --- the Linux driver in throwaway namespaces ---------------------------------------------


class LinuxHarness(Harness):
    name = "linux"

    def __init__(self) -> None:
        super().__init__()
        from tests.netns import test_linux_driver as netns

        self.netns = netns
        self.prefix = f"cpt-{secrets.token_hex(3)}-"
        try:
            self.net = netns.build_net(self.prefix)
        except BaseException:
            self._delete_namespaces()
            raise
        self.policy = netns.POLICY
        self.cellular = "lte0"
        self.cellular_address = "100.64.100.2/24"
        self.far: Any = None

    def make_driver(self) -> RouterDriver:
        from drivers.router.linux.driver import LinuxRouterDriver

        return LinuxRouterDriver(netns=self.net.cpe, interfaces=("lan0", "wan0", "lte0"))

    async def customer_config(self) -> Any:
        ns = self.net.ns
        return (ns(self.net.cpe, "nft", "list", "table", "ip", "customer_nat"),
                ns(self.net.cpe, "ip", "route", "show", "table", "main"))

    async def whole_config(self) -> Any:
        return self.netns.snapshot(self.net)

    async def tamper(self) -> None:
        self.net.ns(self.net.cpe, "nft", "delete", "table", "inet", "cpe_agent")

    async def start_flows(self) -> None:
        if self.far is None:
            self.far = self.netns.Far(self.net)
        for dst, port in ((SBC, 5060), (SBC, 10002), (WEB, 8080), (SBC, 9999)):
            self.netns.path_of(self.net, self.far, dst, port)

    async def flows(self) -> set[tuple[str, int]]:
        found = set()
        out = self.net.ns(self.net.cpe, "conntrack", "-L", "-p", "udp", check=False)
        for line in out.splitlines():
            fields: dict[str, str] = {}
            for key, _, value in (f.partition("=") for f in line.split() if "=" in f):
                fields.setdefault(key, value)
            if "dst" in fields:
                found.add((fields["dst"], int(fields["dport"])))
        return found

    async def cellular_traffic(self) -> None:
        self.net.send(SBC, 10002, "--sport", "40002", "--count", "5", "--size", "1000")

    async def set_carrier(self, up: bool) -> None:
        self.net.ns(self.net.far, "ip", "link", "set", "carrier0", "up" if up else "down")

    async def set_sip_helper(self, on: bool) -> None:
        """A customer's nftables `ct helper` of type sip in a table of their own."""
        from tests.netns import test_linux_sip_helper as helper

        if on:
            helper.add_sip_helper(self.net.cpe)
        else:
            helper.remove_sip_helper(self.net.cpe)

    async def close(self) -> None:
        await super().close()
        if self.far is not None:
            self.far.stop()
        self._delete_namespaces()

    def _delete_namespaces(self) -> None:
        for name in ("lan", "cpe", "far"):
            self.netns.run("ip", "netns", "del", f"{self.prefix}{name}", check=False)


# --- a real MikroTik, when an operator names one ------------------------------------------


class RigHarness(Harness):
    """A real router (hil/rigs/routeros.py). No side channel: the tests that need one skip;
    the customer's config is read over the API and compared before and after."""

    def __init__(self, rig: RigConfig) -> None:
        super().__init__()
        self.rig = rig
        self.name = f"routeros-rig-{rig.host}"
        self.policy = rig.policy()
        self.cellular = rig.cellular
        self.cellular_address = rig.cellular_address or ""

    def make_driver(self) -> RouterDriver:
        from drivers.router.routeros.driver import RouterOSDriver

        return RouterOSDriver(**self.rig.driver_options())

    def _channel(self) -> Any:
        from drivers.router.routeros.transport import Channel, endpoint

        o = self.rig.driver_options()
        return Channel(endpoint(o["host"], o["port"], o["username"], o["password"],
                                plain_api=o["plain_api"], tls_ca_file=o["tls_ca_file"],
                                tls_verify=o["tls_verify"]), "rig")

    async def _read(self, menus: tuple[str, ...]) -> dict[str, list[dict[str, str]]]:
        channel = self._channel()
        try:
            return {m: (await channel.call(f"{m}/print")).rows for m in menus}
        finally:
            await channel.close()

    async def customer_config(self) -> Any:
        return untagged(await self._read(RIG_MENUS))

    async def whole_config(self) -> Any:
        return stable(await self._read(RIG_MENUS))

    async def tamper(self) -> None:
        """Disable the agent's DSCP marking rule (harmless: nothing is marked in PRIMARY)."""
        channel = self._channel()
        try:
            rows = (await channel.call("/ip/firewall/mangle/print")).rows
            target = next(r for r in rows
                          if r.get("comment", "").startswith("cpe-agent:mark-dscp-ef"))
            await channel.call("/ip/firewall/mangle/set", {".id": target[".id"], "disabled": "yes"})
        finally:
            await channel.close()

    async def flows(self) -> set[tuple[str, int]]:
        return set()

    async def set_sip_helper(self, on: bool) -> None:
        pytest.skip(f"{self.name}: the tests do not turn a real router's SIP helper on "
                    "(it would break the site's calls until the next apply)")

    async def close(self) -> None:
        """Leave the router as it was found: the agent's items removed."""
        cleaner = self.make_driver()
        try:
            await cleaner.open()
            await cleaner.remove_all()
        finally:
            await cleaner.close()
            await super().close()


#: The customer's configuration as compared on a rig (interfaces left out: their counters
#: and link state move by themselves).
RIG_MENUS = ("/ip/firewall/filter", "/ip/firewall/nat", "/ip/firewall/mangle", "/ip/route",
             "/ip/address")


async def eventually(check: Callable[[], Any], timeout_s: float = 5.0) -> Any:
    """Poll `check` (sync or async) until it returns something truthy, or fail by a deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s} s")
        await asyncio.sleep(0.02)


def linux_skip_reason() -> str | None:
    if sys.platform != "linux" or os.geteuid() != 0:
        return "the Linux driver's contract run needs root to build network namespaces"
    return None
