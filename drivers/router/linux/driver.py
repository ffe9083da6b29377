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
import dataclasses
import errno
import logging
import os
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from pyroute2 import AsyncIPRoute
from pyroute2.conntrack import AsyncConntrack
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import RTMGRP_LINK

from drivers import aio
from drivers.errors import DeviceReplyError, NeedsHumanError, RetryableError
from drivers.types import Counters, LinkEvent, LinkStatus, RouterState, VoipPath, VoipPolicy

from . import readback, rules, sip_helper
from .commands import NEEDS_ROOT, Commands
from .rules import AGENT_PROTO, RouteSpec, RuleSpec

log = logging.getLogger(__name__)

ARPHRD_ETHER = 1
DEFAULT_TIMEOUT_S = 10.0
INTERFACE_DOWN_REMEDY = (
    "The agent retries by itself; if the interface stays down, check the modem, its cable "
    "and its driver (ip link)."
)
KERNEL_REFUSED_REMEDY = (
    "The agent retries; if it keeps failing, report the message and raw reply to support."
)
#: Socket failures in a row before watch_carrier gives up and raises.
WATCH_MAX_FAILURES = 3


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
        self._commands = Commands(netns, self.timeout_s)
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
            await self._commands.nft("list", "tables")
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
        self._drop_socket()

    # --- policy -----------------------------------------------------------------------

    async def apply_policy(self, policy: VoipPolicy) -> None:
        rules.validate(policy)
        async with self._lock:
            self._policy = policy
            listing = await self._commands.listing()
            packets, octets = listing.counter if listing and listing.counter else (0, 0)
            plan = rules.build_nft(
                policy,
                blocked_packets=packets,
                blocked_bytes=octets,
                counters=listing.counters if listing is not None else None,
            )
            if readback.nft_drift(plan, listing):
                await self._commands.nft("-f", "-", script=plan.script)
            await self._apply_routing(policy)
        if await self._commands.rp_filter_is_strict(policy.cellular_interface):
            log.warning(
                "strict rp_filter drops the replies VoIP gets over %s during failover; "
                "set net.ipv4.conf.all.rp_filter=2 and net.ipv4.conf.%s.rp_filter=2 (loose)",
                policy.cellular_interface,
                policy.cellular_interface,
            )

    async def _apply_routing(self, policy: VoipPolicy) -> None:
        links = await self._links()
        cellular = links.get(policy.cellular_interface)
        if cellular is None:
            raise RetryableError(
                f"The cellular interface {policy.cellular_interface} does not exist; check "
                "links.cellular.interface, or wait for the modem (the agent retries).",
                remedy=INTERFACE_DOWN_REMEDY,
            )
        problem = None
        routes = [r for r in await self._routes(policy, links) if r.proto == AGENT_PROTO]
        add, delete = readback.reconcile(rules.build_routes(policy), routes)
        try:
            for route in delete:
                await self._route("del", route, links)
            for route in add:
                await self._route("replace", route, links)
        except RetryableError as exc:  # e.g. the modem's interface is down: rules still go in
            problem = exc
        addresses = await self._ipv4_addresses(cellular["index"])
        seen = await self._agent_rules(policy)
        add, delete = readback.reconcile(readback.wanted_rules(policy, addresses, seen), seen)
        for rule in add:  # add before delete: a replaced switch rule never leaves a gap
            await self._rule("add", rule)
        for rule in delete:
            await self._rule("del", rule)
        if problem is not None:
            raise problem

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
        """The agent's table, rules and routes as the kernel holds them, and whether the
        kernel's SIP helper acts on traffic here (reported, never changed: it is the
        customer's). `profile` and `profile_matched` stay None: Linux has no firmware
        profiles, and a kernel version put there would read as a matched, tested one.

        The SIP helper reads (two subprocesses in a namespace, about 20 ms) run alongside
        the netlink dumps: the controller reads the state back right after each switch."""
        sip_reads = asyncio.ensure_future(self._sip_helper_on())
        try:
            state = await self._read_installed()
        except BaseException:
            sip_reads.cancel()
            raise
        return dataclasses.replace(state, sip_helper_on=await sip_reads)

    async def _read_installed(self) -> RouterState:
        policy = self._policy
        async with self._lock:
            listing = await self._commands.listing()
            links = await self._links()
            seen_rules = await self._agent_rules(policy)
            routes = await self._routes(policy, links)
            drift: list[str] = []
            if policy is not None:
                drift += readback.nft_drift(rules.build_nft(policy), listing)
                cellular = links.get(policy.cellular_interface)
                addresses = None
                if cellular is not None:
                    addresses = await self._ipv4_addresses(cellular["index"])
                drift += readback.routing_drift(policy, addresses, routes, seen_rules)
        path: VoipPath | None = None
        if readback.switch_is_on(seen_rules):
            path = VoipPath.CELLULAR
        elif listing is not None or seen_rules or any(r.proto == AGENT_PROTO for r in routes):
            path = VoipPath.PRIMARY
        packets, octets = listing.counter if listing and listing.counter else (0, 0)
        return RouterState(
            listing is not None,
            path,
            tuple(drift),
            packets,
            octets,
            voice_bytes=listing.split_bytes(rules.VOICE_COUNTER) if listing else None,
            agent_bytes=listing.split_bytes(rules.AGENT_COUNTER) if listing else None,
        )

    async def _sip_helper_on(self) -> bool | None:
        """The reads for sip_helper.sip_helper_on, side by side: nft and /proc as this
        namespace sees them, and /sys/module (kernel-wide)."""
        ruleset, auto_assign, loaded = await asyncio.gather(
            self._commands.ruleset(),
            self._commands.read_proc(sip_helper.AUTO_ASSIGN_PATH),
            self._commands.module_loaded(sip_helper.SIP_MODULE),
        )
        return sip_helper.sip_helper_on(ruleset, auto_assign, loaded)

    async def remove_all(self) -> int:
        """Delete the agent's table, rules and routes, found by their markers alone (so it
        works in a fresh process that never applied a policy)."""
        removed = 0
        async with self._lock:
            if await self._commands.listing() is not None:
                await self._commands.nft("-f", "-", script=rules.removal_script())
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
        stream_timeout_s = await self._commands.udp_stream_timeout_s()
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
                "the agent retries when it is back.",
                remedy=INTERFACE_DOWN_REMEDY,
            )
        stats = link.get("stats64") or link.get("stats") or {}
        boot_id = await self._commands.boot_id()
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
                for missed in readback.carrier_resync(known or current, current):
                    yield missed
                known = current
                while True:
                    with _netlink_errors("watch interface carrier"):
                        batch = [message async for message in ipr.get()]
                    if not batch:
                        raise RetryableError("The netlink socket closed; the agent reopens it.")
                    failures = 0
                    for message in batch:
                        change = readback.carrier_event(known, message)
                        if change is not None:
                            yield change
            except RetryableError as exc:
                failures += 1
                if failures >= WATCH_MAX_FAILURES:
                    raise
                log.warning("carrier watch restarts after: %s", exc)
            finally:
                ipr.close()

    # --- netlink ----------------------------------------------------------------------

    def _errors(self, doing: str) -> contextlib.AbstractContextManager[None]:
        """Error mapping for commands on the shared socket, which is renewed on failure."""
        return _netlink_errors(doing, self._drop_socket)

    def _drop_socket(self) -> None:
        if self._ipr is not None:
            with contextlib.suppress(Exception):
                self._ipr.close()
            self._ipr = None

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
        with self._errors("list interfaces"):
            return {m.get("ifname"): m async for m in await self._iproute().link("dump")}

    async def _ipv4_addresses(self, index: int) -> list[str]:
        with self._errors("list addresses"):
            dump = await self._iproute().addr("dump", family=socket.AF_INET, index=index)
            return [f"{m.get('address')}/{m['prefixlen']}" async for m in dump]

    async def _agent_rules(self, policy: VoipPolicy | None) -> list[RuleSpec]:
        with self._errors("list routing rules"):
            dump = await self._iproute().rule("dump", family=socket.AF_INET)
            found = [readback.rule_from_message(m) async for m in dump]
        return [rule for rule in found if readback.is_agent_rule(rule, policy)]

    async def _routes(self, policy: VoipPolicy | None, links: dict[str, Any]) -> list[RouteSpec]:
        """The agent's routes (any table) plus any default route in the cellular table."""
        names = {m["index"]: name for name, m in links.items()}
        with self._errors("list routes"):
            dump = await self._iproute().route("dump", family=socket.AF_INET)
            found = [readback.route_from_message(m, names) async for m in dump]
        table = policy.cellular_table_id if policy is not None else None
        return [
            route
            for route in found
            if route.proto == AGENT_PROTO or (route.table == table and route.dst == "0.0.0.0/0")
        ]

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
        with self._errors(f"{command} the {kind} '{what}'"):
            try:
                await aio.wait_for(method(command, **spec), self.timeout_s)
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


# --- module helpers -------------------------------------------------------------------


def _carrier(message: Any) -> bool:
    return readback.carrier_up(message["flags"], message.get("operstate"))


@contextlib.contextmanager
def _netlink_errors(
    doing: str, on_socket_error: Callable[[], None] | None = None
) -> Iterator[None]:
    """Map pyroute2 and socket failures to the driver error tree, once, here.

    `on_socket_error` lets the caller drop a socket that may hold stale replies (after a
    timeout) or a latched error, so the next command starts on a fresh one."""
    try:
        yield
    except NetlinkError as exc:
        if exc.code in (errno.EPERM, errno.EACCES):
            raise NeedsHumanError(f"Cannot {doing}: {NEEDS_ROOT}.") from exc
        if exc.code in (errno.ENODEV, errno.ENETUNREACH, errno.ENETDOWN, errno.EHOSTUNREACH):
            raise RetryableError(
                f"Cannot {doing}: {os.strerror(exc.code)} (is the interface down?); "
                "the agent retries.",
                remedy=INTERFACE_DOWN_REMEDY,
            ) from exc
        raise DeviceReplyError(
            f"The kernel refused to {doing}: {os.strerror(exc.code)}; report the raw reply.",
            raw=str(exc),
            remedy=KERNEL_REFUSED_REMEDY,
        ) from exc
    except FileNotFoundError as exc:
        raise NeedsHumanError(
            f"Cannot {doing}: the network namespace or device is missing; check the netns option."
        ) from exc
    except PermissionError as exc:
        raise NeedsHumanError(f"Cannot {doing}: {NEEDS_ROOT}.") from exc
    except (OSError, TimeoutError) as exc:
        if on_socket_error is not None:
            on_socket_error()
        raise RetryableError(f"Cannot {doing} ({exc}); the agent retries.") from exc
