"""LinuxRouterDriver: VoIP-only cellular failover on a Linux router (nftables + netlink).

The only module in the project that imports pyroute2. pyroute2 0.9 is built on asyncio
(its synchronous IPRoute is a wrapper that runs a private event loop with thread-local
state), so this driver uses AsyncIPRoute and AsyncConntrack on the agent's own loop: no
thread, nothing blocks. `nft` and `/proc` reads are blocking and go through
`asyncio.to_thread`. One command is in flight at a time (an asyncio.Lock); the carrier
watch has its own socket so the fast path never waits behind a slow apply.

What gets installed, and why it is shaped so, is in README.md beside this file.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import socket
import subprocess
from collections.abc import AsyncIterator, Iterator
from typing import Any

from pyroute2 import AsyncIPRoute
from pyroute2.conntrack import AsyncConntrack
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import RTMGRP_LINK

from drivers.errors import DeviceReplyError, NeedsHumanError, RetryableError
from drivers.types import Counters, LinkEvent, LinkStatus, RouterState, VoipPath, VoipPolicy

from . import readback, rules
from .rules import AGENT_PROTO, RouteSpec, RuleSpec

log = logging.getLogger(__name__)

BOOT_ID_PATH = "/proc/sys/kernel/random/boot_id"
UDP_STREAM_TIMEOUT_PATH = "/proc/sys/net/netfilter/nf_conntrack_udp_timeout_stream"
#: The kernel default since 5.x, used when conntrack is not loaded (so nothing is active).
DEFAULT_UDP_STREAM_TIMEOUT_S = 120
ARPHRD_ETHER = 1
DEFAULT_TIMEOUT_S = 10.0
#: Socket failures in a row before watch_carrier gives up and raises.
WATCH_MAX_FAILURES = 3

_NEEDS_ROOT = (
    "the agent lacks CAP_NET_ADMIN; run it as root or grant it CAP_NET_ADMIN "
    "(AmbientCapabilities= in the systemd unit)"
)


class LinuxRouterDriver:
    """RouterDriver for the box the agent runs on (or one of its network namespaces).

    Options: `netns` operates inside a named namespace (tests, labs); `interfaces` are
    checked by open(); `timeout_s` bounds each nft run and netlink call. Options meant
    for other drivers (host, username, ...) are accepted and ignored, so the agent can
    build any driver from one settings section.
    """

    def __init__(
        self,
        *,
        netns: str | None = None,
        interfaces: tuple[str, ...] | list[str] = (),
        timeout_s: float | None = None,
        **_other_drivers_options: Any,
    ) -> None:
        self.netns = netns
        self.interfaces = tuple(interfaces)
        self.timeout_s = float(timeout_s) if timeout_s else DEFAULT_TIMEOUT_S
        self._lock = asyncio.Lock()
        self._ipr: AsyncIPRoute | None = None
        self._policy: VoipPolicy | None = None

    # --- lifecycle --------------------------------------------------------------------

    async def open(self) -> None:
        if self.netns and not os.path.exists(f"/run/netns/{self.netns}"):
            raise NeedsHumanError(
                f"The network namespace {self.netns} does not exist; create it or fix the option."
            )
        async with self._lock:
            await self._nft("list", "tables")
            links = await self._links()
        wanted = set(self.interfaces)
        if self._policy is not None:
            wanted |= {self._policy.cellular_interface, *self._policy.lan_interfaces}
        missing = sorted(n for n in wanted if n not in links and "*" not in n)
        if missing:
            raise NeedsHumanError(
                f"Interface {', '.join(missing)} does not exist; "
                "fix the interface names in the config or bring the interface up."
            )

    async def close(self) -> None:
        if self._ipr is not None:
            self._ipr.close()
            self._ipr = None

    # --- policy -----------------------------------------------------------------------

    async def apply_policy(self, policy: VoipPolicy) -> None:
        rules.validate(policy)
        async with self._lock:
            self._policy = policy
            listing = await self._listing()
            packets, octets = listing.counter if listing and listing.counter else (0, 0)
            plan = rules.build_nft(policy, blocked_packets=packets, blocked_bytes=octets)
            if readback.nft_drift(plan, listing):
                await self._nft("-f", "-", script=plan.script)
            await self._apply_routing(policy)
        await self._warn_on_strict_rp_filter(policy.cellular_interface)

    async def _apply_routing(self, policy: VoipPolicy) -> None:
        links = await self._links()
        cellular = links.get(policy.cellular_interface)
        if cellular is None:
            raise RetryableError(
                f"The cellular interface {policy.cellular_interface} does not exist; check "
                "links.cellular.interface, or wait for the modem (the agent retries)."
            )
        routes = [r for r in await self._routes(policy, links) if r.proto == AGENT_PROTO]
        add, delete = readback.reconcile(rules.build_routes(policy), routes)
        for route in delete:
            await self._route("del", route, links)
        for route in add:
            await self._route("replace", route, links)
        addresses = await self._ipv4_addresses(cellular["index"])
        seen = await self._agent_rules(policy)
        add, delete = readback.reconcile(readback.wanted_rules(policy, addresses, seen), seen)
        for rule in add:  # add before delete: a replaced switch rule never leaves a gap
            await self._rule("add", rule)
        for rule in delete:
            await self._rule("del", rule)

    async def set_voip_path(self, path: VoipPath) -> None:
        """The switch is one ip rule (fwmark -> cellular table); adding or deleting it
        takes effect for the next packet (the kernel flushes its route cache)."""
        policy = self._require_policy()
        wanted = [rules.build_switch_rule(policy)] if path is VoipPath.CELLULAR else []
        async with self._lock:
            switches = [r for r in await self._agent_rules(policy) if r.fwmark is not None]
            add, delete = readback.reconcile(wanted, switches)
            for rule in add:
                await self._rule("add", rule)
            for rule in delete:
                await self._rule("del", rule)

    async def read_state(self) -> RouterState:
        policy = self._policy
        async with self._lock:
            listing = await self._listing()
            links = await self._links()
            seen_rules = await self._agent_rules(policy)
            routes = await self._routes(policy, links)
            drift: list[str] = []
            if policy is not None:
                drift += readback.nft_drift(rules.build_nft(policy), listing)
                cellular = links.get(policy.cellular_interface)
                addresses: list[str] = []
                if cellular is None:
                    drift.append(f"the cellular interface {policy.cellular_interface} is missing")
                else:
                    addresses = await self._ipv4_addresses(cellular["index"])
                drift += readback.routing_drift(policy, addresses, routes, seen_rules)
        path: VoipPath | None = None
        if readback.switch_is_on(seen_rules):
            path = VoipPath.CELLULAR
        elif listing is not None or seen_rules or any(r.proto == AGENT_PROTO for r in routes):
            path = VoipPath.PRIMARY
        packets, octets = listing.counter if listing and listing.counter else (0, 0)
        return RouterState(listing is not None, path, tuple(drift), packets, octets)

    async def remove_all(self) -> int:
        """Delete the agent's table, rules and routes, found by their markers alone (so it
        works in a fresh process that never applied a policy)."""
        removed = 0
        async with self._lock:
            if await self._listing() is not None:
                await self._nft("-f", "-", script=rules.removal_script())
                removed += 1
            for rule in await self._agent_rules(self._policy):
                removed += await self._rule("del", rule)
            links = await self._links()
            for route in await self._routes(None, links):
                removed += await self._route("del", route, links)
        return removed

    # --- conntrack --------------------------------------------------------------------

    async def flush_voip_conntrack(self) -> int:
        policy = self._require_policy()
        networks = rules.voip_networks(policy)
        deleted = 0
        async with self._lock:
            conntrack = self._conntrack()
            try:
                for entry in await self._conntrack_entries(conntrack):
                    flow = entry.tuple_orig
                    if readback.voip_flow_kind(
                        policy, networks, flow.proto, flow.daddr, flow.dport
                    ):
                        with _netlink_errors("delete a conntrack entry"):
                            try:
                                await conntrack.delete(entry)
                                deleted += 1
                            except NetlinkError as exc:
                                if exc.code != errno.ENOENT:  # expired meanwhile: fine
                                    raise
            finally:
                conntrack.close()
        return deleted

    async def active_calls(self) -> int:
        """RTP flows to the VoIP prefixes that carried a packet in the last few seconds.

        Stateless: an assured UDP flow's conntrack timeout is reset to
        nf_conntrack_udp_timeout_stream by each packet, so a timeout within 5 s of it
        means recent traffic. RTP and its RTCP (port + 1) count as one call.
        """
        policy = self._require_policy()
        networks = rules.voip_networks(policy)
        stream_timeout_s = await self._udp_stream_timeout_s()
        calls = set()
        async with self._lock:
            conntrack = self._conntrack()
            try:
                entries = await self._conntrack_entries(conntrack)
            finally:
                conntrack.close()
        for entry in entries:
            flow = entry.tuple_orig
            kind = readback.voip_flow_kind(policy, networks, flow.proto, flow.daddr, flow.dport)
            if kind == "rtp" and readback.rtp_is_active(
                entry.status, entry.timeout, stream_timeout_s
            ):
                calls.add((flow.saddr, flow.daddr, flow.dport // 2))
        return len(calls)

    # --- links ------------------------------------------------------------------------

    async def interface_counters(self, interface: str) -> Counters:
        """Linux counts bytes at the driver: on Ethernet (and veth) that includes the
        14-byte Ethernet header but not the FCS, so counts_frames is True there; on
        raw-IP links (qmi_wwan raw-ip, PPP, tun) the counters are IP bytes."""
        async with self._lock:
            link = (await self._links()).get(interface)
        if link is None:
            raise RetryableError(
                f"Interface {interface} does not exist, so it has no counters; "
                "the agent retries when it is back."
            )
        stats = link.get("stats64") or link.get("stats") or {}
        boot_id = (await asyncio.to_thread(_read_text, BOOT_ID_PATH)).strip()
        return Counters(
            interface=interface,
            rx_bytes=stats.get("rx_bytes", 0),
            tx_bytes=stats.get("tx_bytes", 0),
            rx_packets=stats.get("rx_packets", 0),
            tx_packets=stats.get("tx_packets", 0),
            # A re-created interface (a USB modem re-enumerating) restarts its counters
            # under a new ifindex, so the index is part of the counters' epoch.
            boot_id=f"{boot_id}/ifindex-{link['index']}",
            counts_frames=link["ifi_type"] == ARPHRD_ETHER,
            width_bits=64,
        )

    async def link_status(self, interface: str) -> LinkStatus:
        """A missing interface (an unplugged modem) is reported as carrier down."""
        async with self._lock:
            link = (await self._links()).get(interface)
            if link is None:
                return LinkStatus(interface, False, ())
            addresses = await self._ipv4_addresses(link["index"])
        return LinkStatus(interface, _carrier(link), tuple(addresses))

    async def watch_carrier(self) -> AsyncIterator[LinkEvent]:
        """Carrier changes from RTM_NEWLINK/RTM_DELLINK multicast, as they happen.

        The socket is bound before the initial dump, so nothing falls between them; after
        a socket failure (e.g. ENOBUFS) it re-binds, re-dumps and reports what changed.
        """
        known: dict[int, tuple[str, bool]] | None = None
        failures = 0
        while True:
            ipr = self._new_iproute()
            try:
                with _netlink_errors("watch interface carrier"):
                    await ipr.bind(groups=RTMGRP_LINK)
                    current = {
                        m["index"]: (m.get("ifname"), _carrier(m))
                        async for m in await ipr.link("dump")
                    }
                for event in _resync(known or current, current):
                    yield event
                known = current
                while True:
                    with _netlink_errors("watch interface carrier"):
                        batch = [message async for message in ipr.get()]
                    if not batch:
                        raise RetryableError("The netlink socket closed; the agent reopens it.")
                    failures = 0
                    for message in batch:
                        event = _carrier_event(known, message)
                        if event is not None:
                            yield event
            except RetryableError as exc:
                failures += 1
                if failures >= WATCH_MAX_FAILURES:
                    raise
                log.warning("carrier watch restarts after: %s", exc)
            finally:
                ipr.close()

    # --- nftables ---------------------------------------------------------------------

    def _argv(self, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.netns, *argv] if self.netns else argv

    async def _nft(self, *args: str, script: str | None = None) -> str:
        result = await self._run(["nft", *args], script)
        if result.returncode != 0:
            raise _nft_error(result.stderr, args)
        return result.stdout

    async def _run(self, argv: list[str], stdin: str | None) -> subprocess.CompletedProcess[str]:
        command = self._argv(argv)
        try:
            return await asyncio.to_thread(
                subprocess.run,
                command,
                input=stdin,
                capture_output=True,
                text=True,
                timeout=self.timeout_s,
                check=False,
            )
        except FileNotFoundError as exc:
            raise NeedsHumanError(
                f"{command[0]} is not installed; install nftables and iproute2."
            ) from exc
        except subprocess.TimeoutExpired as exc:
            raise RetryableError(
                f"{' '.join(argv[:3])} did not finish within {self.timeout_s:g} s; "
                "the agent retries."
            ) from exc

    async def _listing(self) -> readback.NftListing | None:
        """The agent's table as the kernel holds it, or None when there is none."""
        table = [rules.TABLE_FAMILY, rules.TABLE_NAME]
        result = await self._run(["nft", "-j", "list", "table", *table], None)
        if result.returncode != 0:
            if "No such file or directory" in result.stderr and "netns" not in result.stderr:
                return None
            raise _nft_error(result.stderr, ("list", "table"))
        try:
            return readback.parse_listing(json.loads(result.stdout))
        except (ValueError, KeyError, TypeError) as exc:
            raise DeviceReplyError(
                "nft -j printed a listing the agent cannot read; report it with the raw reply.",
                raw=result.stdout,
            ) from exc

    # --- netlink ----------------------------------------------------------------------

    def _new_iproute(self) -> AsyncIPRoute:
        with _netlink_errors("open a netlink socket"):
            # flags=0: never create the namespace by accident (pyroute2 defaults to O_CREAT).
            return AsyncIPRoute(netns=self.netns, flags=0) if self.netns else AsyncIPRoute()

    def _iproute(self) -> AsyncIPRoute:
        if self._ipr is None:
            self._ipr = self._new_iproute()
        return self._ipr

    def _conntrack(self) -> AsyncConntrack:
        with _netlink_errors("open a conntrack socket"):
            return AsyncConntrack(netns=self.netns, flags=0) if self.netns else AsyncConntrack()

    async def _conntrack_entries(self, conntrack: AsyncConntrack) -> list[Any]:
        with _netlink_errors("list connection tracking"):
            return [entry async for entry in await conntrack.dump_entries()]

    async def _links(self) -> dict[str, Any]:
        with _netlink_errors("list interfaces"):
            return {m.get("ifname"): m async for m in await self._iproute().link("dump")}

    async def _ipv4_addresses(self, index: int) -> list[str]:
        with _netlink_errors("list addresses"):
            dump = await self._iproute().addr("dump", family=socket.AF_INET, index=index)
            return [f"{m.get('address')}/{m['prefixlen']}" async for m in dump]

    async def _agent_rules(self, policy: VoipPolicy | None) -> list[RuleSpec]:
        found = []
        with _netlink_errors("list routing rules"):
            async for m in await self._iproute().rule("dump", family=socket.AF_INET):
                src = m.get("src")
                rule = RuleSpec(
                    priority=m.get("priority") or 0,
                    table=m.get("table") or m["table"],
                    src=f"{src}/{m['src_len']}" if src else None,
                    fwmark=m.get("fwmark"),
                    fwmask=m.get("fwmask"),
                    proto=m.get("protocol") or 0,
                )
                if readback.is_agent_rule(rule, policy):
                    found.append(rule)
        return found

    async def _routes(self, policy: VoipPolicy | None, links: dict[str, Any]) -> list[RouteSpec]:
        """The agent's routes (any table) plus any default route in the cellular table."""
        names = {m["index"]: name for name, m in links.items()}
        found = []
        with _netlink_errors("list routes"):
            async for m in await self._iproute().route("dump", family=socket.AF_INET):
                table = m.get("table") or m["table"]
                in_cell_table = policy is not None and table == policy.cellular_table_id
                if m["proto"] != AGENT_PROTO and not (in_cell_table and m["dst_len"] == 0):
                    continue
                oif = m.get("oif")
                found.append(
                    RouteSpec(
                        table=table,
                        gateway=m.get("gateway"),
                        interface=names.get(oif, str(oif or "")),
                        dst=f"{m.get('dst') or '0.0.0.0'}/{m['dst_len']}",
                        proto=m["proto"],
                    )
                )
        return found

    async def _route(self, command: str, route: RouteSpec, links: dict[str, Any]) -> int:
        """Run one route command; 1 if it changed something, 0 if it was already so."""
        link = links.get(route.interface)
        spec: dict[str, Any] = {"dst": route.dst, "table": route.table, "proto": route.proto}
        if link is not None:
            spec["oif"] = link["index"]
        if route.gateway:
            spec["gateway"] = route.gateway
        elif command != "del":
            spec["scope"] = 253  # link: a point-to-point cellular link has no next hop
        return await self._change("route", command, spec, route.describe())

    async def _rule(self, command: str, rule: RuleSpec) -> int:
        spec: dict[str, Any] = {
            "family": socket.AF_INET,
            "table": rule.table,
            "priority": rule.priority,
        }
        if command == "add":
            spec["protocol"] = AGENT_PROTO
        if rule.src:
            address, length = rule.src.split("/")
            spec.update(src=address, src_len=int(length))
        if rule.fwmark is not None:
            spec.update(fwmark=rule.fwmark, fwmask=rule.fwmask or 0xFFFFFFFF)
        return await self._change("rule", command, spec, rule.describe())

    async def _change(self, kind: str, command: str, spec: dict[str, Any], what: str) -> int:
        method = getattr(self._iproute(), kind)
        with _netlink_errors(f"{command} the {kind} '{what}'"):
            try:
                await asyncio.wait_for(method(command, **spec), self.timeout_s)
            except NetlinkError as exc:
                if command == "add" and exc.code == errno.EEXIST:
                    return 0
                if command == "del" and exc.code in (errno.ENOENT, errno.ESRCH):
                    return 0
                raise
        return 1

    # --- helpers ----------------------------------------------------------------------

    def _require_policy(self) -> VoipPolicy:
        if self._policy is None:
            raise NeedsHumanError(
                "The Linux driver has no policy yet; call apply_policy before this."
            )
        return self._policy

    async def _read_proc(self, path: str) -> str | None:
        """A /proc value as seen inside the driver's namespace (None when absent)."""
        if not self.netns:
            try:
                return await asyncio.to_thread(_read_text, path)
            except OSError:
                return None
        result = await self._run(["cat", path], None)
        return result.stdout if result.returncode == 0 else None

    async def _udp_stream_timeout_s(self) -> int:
        text = await self._read_proc(UDP_STREAM_TIMEOUT_PATH)
        return int(text) if text and text.strip().isdigit() else DEFAULT_UDP_STREAM_TIMEOUT_S

    async def _warn_on_strict_rp_filter(self, interface: str) -> None:
        """Strict reverse-path filtering drops the replies VoIP gets over the cellular
        link (their source routes via the primary), so say so; the agent does not change
        the customer's sysctls."""
        values = [
            await self._read_proc(f"/proc/sys/net/ipv4/conf/{name}/rp_filter")
            for name in ("all", interface)
        ]
        if max(int(v) if v and v.strip().isdigit() else 0 for v in values) == 1:
            log.warning(
                "strict rp_filter on %s will drop VoIP replies during failover; "
                "set net.ipv4.conf.%s.rp_filter=2 (loose) and net.ipv4.conf.all.rp_filter=2",
                interface,
                interface,
            )


# --- module helpers -------------------------------------------------------------------


def _read_text(path: str) -> str:
    with open(path, encoding="ascii") as handle:
        return handle.read()


def _carrier(message: Any) -> bool:
    return readback.carrier_up(message["flags"], message.get("operstate"))


def _carrier_event(known: dict[int, tuple[str, bool]], message: Any) -> LinkEvent | None:
    """Update `known` from one link message; an event only when the carrier changed."""
    index = message["index"]
    previous = known.get(index)
    if message.get("event") == "RTM_DELLINK":
        known.pop(index, None)
        name, up = message.get("ifname") or (previous[0] if previous else str(index)), False
    elif message.get("event") == "RTM_NEWLINK":
        name, up = message.get("ifname") or str(index), _carrier(message)
        known[index] = (name, up)
    else:
        return None
    was_up = previous[1] if previous else False
    return LinkEvent(name, up) if up != was_up else None


def _resync(
    before: dict[int, tuple[str, bool]], after: dict[int, tuple[str, bool]]
) -> Iterator[LinkEvent]:
    for index in sorted(set(before) | set(after)):
        name, was_up = before.get(index, (None, False))
        new_name, up = after.get(index, (name, False))
        if up != was_up:
            yield LinkEvent(new_name or name or str(index), up)


def _nft_error(stderr: str, args: tuple[str, ...]) -> Exception:
    first = next((line for line in stderr.splitlines() if line.strip()), "no message")
    if "Operation not permitted" in stderr:
        return NeedsHumanError(f"nft was refused: {_NEEDS_ROOT}.")
    if "Cannot open network namespace" in stderr:
        return NeedsHumanError(f"{first}; create the namespace or fix the netns option.")
    return DeviceReplyError(
        f"nft {' '.join(args[:2])} failed ({first}); check that the kernel has nftables "
        "with nat and masquerade, then report the raw reply.",
        raw=stderr,
    )


@contextlib.contextmanager
def _netlink_errors(doing: str) -> Iterator[None]:
    """Map pyroute2 and socket failures to the driver error tree, once, here."""
    try:
        yield
    except NetlinkError as exc:
        if exc.code in (errno.EPERM, errno.EACCES):
            raise NeedsHumanError(f"Cannot {doing}: {_NEEDS_ROOT}.") from exc
        if exc.code in (errno.ENODEV, errno.ENETUNREACH, errno.ENETDOWN, errno.EHOSTUNREACH):
            raise RetryableError(
                f"Cannot {doing}: {os.strerror(exc.code)} (is the interface down?); "
                "the agent retries."
            ) from exc
        raise DeviceReplyError(
            f"The kernel refused to {doing}: {os.strerror(exc.code)}; report the raw reply.",
            raw=str(exc),
        ) from exc
    except FileNotFoundError as exc:
        raise NeedsHumanError(
            f"Cannot {doing}: the network namespace or device is missing; check the netns option."
        ) from exc
    except PermissionError as exc:
        raise NeedsHumanError(f"Cannot {doing}: {_NEEDS_ROOT}.") from exc
    except (OSError, TimeoutError) as exc:
        raise RetryableError(f"Cannot {doing} ({exc}); the agent retries.") from exc
