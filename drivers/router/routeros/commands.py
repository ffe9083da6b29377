"""Pure builders of the items the RouterOS driver owns, for RouterOS v6 and v7.

Everything here is a function of a VoipPolicy and of the router's dialect (v7
`routing-table` or v6 `routing-mark`), so the whole configuration is checked from tables.
No I/O, no clock, no logging. `reconcile.py` compares these with what the router holds.

What is built, and why (README.md beside this file has the picture):

- address lists `cpe-agent-voip` (the provider's prefixes) and `cpe-agent-agent` (the
  agent's own servers, e.g. its MQTT broker);
- v7: the routing table `cpe-agent-lte` (fib); both: a default route in it via the LTE
  gateway (v6: a route with `routing-mark=cpe-agent-lte`);
- mangle: a chain `cpe-agent-voip` that marks SIP (UDP/TCP), RTP and DSCP EF to the
  provider's prefixes from the LAN with `mark-routing`; one jump rule from `prerouting`
  into it is THE SWITCH: enabled = VoIP by LTE, disabled = VoIP by the primary. A failover
  is one `set` of that rule. In PRIMARY nothing is marked at all.
- mangle: the steering rule for the agent's own SIP OPTIONS probes (a fixed source port),
  always on, so the agent can test LTE on purpose; and, first in the marking chain, a
  return for its primary-link probes, so that those never leave by LTE in failover;
- filter: a jump for everything forwarded out of LTE into `cpe-agent-lte-out`, which
  accepts VoIP and drops (and counts) the rest; an accept for replies coming in on LTE.
  Both sit before the customer's fasttrack rule: fasttracked packets skip mangle, so a
  fasttracked VoIP flow would lose its routing mark and leave by the primary;
- nat: masquerade out of LTE, at the top of srcnat;
- not built here: the SIP helper (service-port `sip`) is disabled by the driver.

Every item carries the comment `cpe-agent:<role>`: the tag starts with letters because
librouteros turns integer-looking and yes/no/true/false words into Python values.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from drivers.errors import NeedsHumanError
from drivers.router.policy_checks import check_gateway, check_port, ipv4_networks
from drivers.types import AGENT_TAG, VoipPolicy

TAG = f"{AGENT_TAG}:"
TABLE = "cpe-agent-lte"
VOIP_LIST = "cpe-agent-voip"
AGENT_LIST = "cpe-agent-agent"
#: A dynamic address-list entry whose comment carries a random token: it vanishes on a
#: reboot, so its token is the router's boot identity (see driver.interface_counters).
BOOT_LIST = "cpe-agent-boot"
BOOT_ROLE = "boot"
MARK_CHAIN = "cpe-agent-voip"
GUARD_CHAIN = "cpe-agent-lte-out"
SWITCH_ROLE = "switch"
DROP_ROLE = "drop-non-voip"
DSCP_EF = "46"

ADDRESS_LIST = "/ip/firewall/address-list"
ROUTING_TABLE = "/routing/table"
ROUTE = "/ip/route"
MANGLE = "/ip/firewall/mangle"
FILTER = "/ip/firewall/filter"
NAT = "/ip/firewall/nat"
SERVICE_PORT = "/ip/firewall/service-port"
CONNECTION = "/ip/firewall/connection"
INTERFACE = "/interface"
IP_ADDRESS = "/ip/address"

#: Menus holding the agent's items, in the order items are added (dependencies first).
MENUS_V7 = (ADDRESS_LIST, ROUTING_TABLE, ROUTE, MANGLE, FILTER, NAT)
MENUS_V6 = (ADDRESS_LIST, ROUTE, MANGLE, FILTER, NAT)
#: Firewall menus keep their rules in order; the others are sets.
ORDERED_MENUS = frozenset({MANGLE, FILTER, NAT})

#: Chains only the agent writes to: the order of its rules there is checked and kept.
OWN_CHAINS = frozenset({MARK_CHAIN, GUARD_CHAIN})
#: Where a new rule goes. None: appended (in an own chain: before its successor).
BEFORE_FASTTRACK = "before-fasttrack"  # before the first rule of chain forward (and so
#                                       before any fasttrack rule); checked on read-back
TOP_OF_CHAIN = "top-of-chain"  # before the first rule of its chain (not checked)

NOUNS = {
    ADDRESS_LIST: "address-list entry",
    ROUTING_TABLE: "routing table",
    ROUTE: "route",
    MANGLE: "mangle rule",
    FILTER: "filter rule",
    NAT: "NAT rule",
}

#: RouterOS interface names: 1..64 bytes with no control characters; the API needs no
#: quoting, but a wildcard (the Linux driver's `lan*`) means nothing to RouterOS.
_MAX_IFNAME = 64


@dataclass(frozen=True)
class Dialect:
    """How one RouterOS line spells policy routing."""

    #: "routing-table" (v7: /routing/table + route routing-table) or "routing-mark" (v6).
    routing: str = "routing-table"

    @property
    def v7(self) -> bool:
        return self.routing == "routing-table"

    @property
    def menus(self) -> tuple[str, ...]:
        return MENUS_V7 if self.v7 else MENUS_V6


V7 = Dialect("routing-table")
V6 = Dialect("routing-mark")


@dataclass(frozen=True)
class Desired:
    """One item the agent owns, as it should be on the router."""

    menu: str
    role: str
    #: Properties as the API takes them (strings), without the comment.
    props: tuple[tuple[str, str], ...]
    placement: str | None = None
    #: The failover switch: its `disabled` is the VoIP path, not configuration.
    switch: bool = False

    @property
    def tag(self) -> str:
        return TAG + self.role

    @property
    def values(self) -> dict[str, str]:
        return dict(self.props)

    @property
    def chain(self) -> str | None:
        return self.values.get("chain")

    def describe(self) -> str:
        return f"the {NOUNS.get(self.menu, 'item')} {self.tag}"


def item(menu: str, role: str, placement: str | None = None, switch: bool = False,
         **props: str) -> Desired:
    """A Desired from Python keywords (`dst_port` -> `dst-port`)."""
    pairs = tuple((k.replace("_", "-"), v) for k, v in props.items())
    return Desired(menu, role, pairs, placement, switch)


def role_of(comment: str | None) -> str | None:
    """The role in an agent's tag, or None when the comment is not the agent's."""
    if comment and comment.startswith(TAG):
        return comment[len(TAG):]
    return None


# --- validation ---------------------------------------------------------------------


def validate(policy: VoipPolicy) -> None:
    """Reject a policy the router could not honour, with one sentence per cause."""
    names = [policy.cellular_interface, *policy.lan_interfaces]
    if policy.primary_interface:
        names.append(policy.primary_interface)
    for name in names:
        if (not name or len(name.encode()) > _MAX_IFNAME or "*" in name
                or any(ord(c) < 32 for c in name)):
            raise NeedsHumanError(
                f"{name!r} is not a RouterOS interface name (no wildcards); "
                "fix the interface in the config."
            )
    if not policy.lan_interfaces:
        raise NeedsHumanError("The policy names no LAN interface; set voip.lan_interfaces.")
    if policy.cellular_interface in policy.lan_interfaces:
        raise NeedsHumanError(
            f"{policy.cellular_interface} is both the cellular and a LAN interface; fix the config."
        )
    if not policy.voip_prefixes:
        raise NeedsHumanError("The policy lists no VoIP prefixes; set voip.sbc_addresses.")
    networks(policy.voip_prefixes, "voip_prefixes")
    networks(policy.agent_prefixes, "agent_prefixes")
    if not policy.sip_ports:
        raise NeedsHumanError("The policy lists no SIP ports; set voip.sip_ports.")
    for port in policy.sip_ports:
        check_port(port, "a SIP port")
    check_port(policy.rtp_port_min, "rtp_port_min")
    check_port(policy.rtp_port_max, "rtp_port_max")
    if policy.rtp_port_min > policy.rtp_port_max:
        raise NeedsHumanError(
            f"rtp_port_min {policy.rtp_port_min} is above rtp_port_max {policy.rtp_port_max}; "
            "swap them in the config."
        )
    for name in ("cellular_probe_port", "primary_probe_port"):
        port = getattr(policy, name)
        if port is not None:
            check_port(port, name)
    if policy.cellular_probe_port is not None and \
            policy.cellular_probe_port == policy.primary_probe_port:
        raise NeedsHumanError(
            "cellular_probe_port and primary_probe_port are the same port; pick two.")
    check_gateway(policy.cellular_gateway)


def networks(prefixes: Iterable[str], what: str) -> tuple[ipaddress.IPv4Network, ...]:
    return ipv4_networks(prefixes, what, driver="RouterOS", strict=False)


def list_address(network: ipaddress.IPv4Network) -> str:
    """As RouterOS prints an address-list address: a host without its /32."""
    if network.prefixlen == 32:
        return str(network.network_address)
    return str(network)


# --- builders -----------------------------------------------------------------------


def build(policy: VoipPolicy, dialect: Dialect) -> tuple[Desired, ...]:
    """Every item the agent owns for `policy`, in the order they are added."""
    validate(policy)
    items: list[Desired] = []
    items += _address_lists(policy)
    if dialect.v7:
        items.append(item(ROUTING_TABLE, "table", name=TABLE, fib="yes"))
    gateway = policy.cellular_gateway or policy.cellular_interface
    route = {"dst-address": "0.0.0.0/0", "gateway": gateway, "distance": "1",
             dialect.routing: TABLE}
    items.append(Desired(ROUTE, "route", tuple(route.items())))
    items += _mangle(policy)
    items += _filter(policy)
    items.append(item(NAT, "masquerade", TOP_OF_CHAIN, chain="srcnat",
                      out_interface=policy.cellular_interface, action="masquerade"))
    return tuple(items)


def _address_lists(policy: VoipPolicy) -> list[Desired]:
    out = []
    for list_name, prefixes, what, role in (
        (VOIP_LIST, policy.voip_prefixes, "voip_prefixes", "voip"),
        (AGENT_LIST, policy.agent_prefixes, "agent_prefixes", "agent"),
    ):
        seen: set[str] = set()
        for network in networks(prefixes, what):
            address = list_address(network)
            if address not in seen:
                seen.add(address)
                out.append(item(ADDRESS_LIST, f"{role}-list {address}", list=list_name,
                                address=address))
    return out


def _sip_ports(policy: VoipPolicy) -> str:
    return ",".join(str(p) for p in dict.fromkeys(policy.sip_ports))


def _rtp_ports(policy: VoipPolicy) -> str:
    if policy.rtp_port_min == policy.rtp_port_max:
        return str(policy.rtp_port_min)
    return f"{policy.rtp_port_min}-{policy.rtp_port_max}"


def _voip_matchers(policy: VoipPolicy) -> list[tuple[str, dict[str, str]]]:
    """(name, matchers) for each kind of VoIP packet: SIP udp/tcp, RTP, DSCP EF; all of
    them to the provider's prefixes, so a stray flow in the RTP range costs no plan bytes."""
    to_voip = {"dst-address-list": VOIP_LIST}
    kinds = [
        ("sip-udp", {**to_voip, "protocol": "udp", "dst-port": _sip_ports(policy)}),
        ("sip-tcp", {**to_voip, "protocol": "tcp", "dst-port": _sip_ports(policy)}),
        ("rtp", {**to_voip, "protocol": "udp", "dst-port": _rtp_ports(policy)}),
    ]
    if policy.match_dscp_ef:
        kinds.append(("dscp-ef", {**to_voip, "dscp": DSCP_EF}))
    if policy.agent_prefixes:
        kinds.append(("agent", {"dst-address-list": AGENT_LIST}))
    return kinds


def _mark(chain: str, matchers: Mapping[str, str]) -> dict[str, str]:
    return {"chain": chain, **matchers, "action": "mark-routing", "new-routing-mark": TABLE,
            "passthrough": "yes"}


def _mangle(policy: VoipPolicy) -> list[Desired]:
    out = []
    if policy.primary_probe_port is not None:
        # First in the chain: the agent's primary-link SIP probes are never steered.
        out.append(item(MANGLE, "probe-primary", chain=MARK_CHAIN, protocol="udp",
                        src_port=str(policy.primary_probe_port), action="return"))
    for lan in policy.lan_interfaces:
        for name, matchers in _voip_matchers(policy):
            props = _mark(MARK_CHAIN, {"in-interface": lan, **matchers})
            out.append(Desired(MANGLE, f"mark-{name}@{lan}", tuple(props.items())))
    if policy.cellular_probe_port is not None:
        for lan in policy.lan_interfaces:
            props = _mark("prerouting", {
                "in-interface": lan, "protocol": "udp",
                "src-port": str(policy.cellular_probe_port), "dst-address-list": VOIP_LIST,
            })
            out.append(Desired(MANGLE, f"probe-steer@{lan}", tuple(props.items())))
    # Last, so that nothing jumps into a half-built chain.
    out.append(item(MANGLE, SWITCH_ROLE, switch=True, chain="prerouting", action="jump",
                    jump_target=MARK_CHAIN))
    return out


def _filter(policy: VoipPolicy) -> list[Desired]:
    out = []
    for name, matchers in _voip_matchers(policy):
        props = {"chain": GUARD_CHAIN, **matchers, "action": "accept"}
        out.append(Desired(FILTER, f"allow-{name}", tuple(props.items())))
    if policy.cellular_probe_port is not None:
        out.append(item(FILTER, "allow-probe", chain=GUARD_CHAIN, protocol="udp",
                        src_port=str(policy.cellular_probe_port),
                        dst_address_list=VOIP_LIST, action="accept"))
    out.append(item(FILTER, DROP_ROLE, chain=GUARD_CHAIN, action="drop"))
    out.append(item(FILTER, "lte-replies", BEFORE_FASTTRACK, chain="forward",
                    in_interface=policy.cellular_interface,
                    connection_state="established,related", action="accept"))
    out.append(item(FILTER, "guard", BEFORE_FASTTRACK, chain="forward",
                    out_interface=policy.cellular_interface, action="jump",
                    jump_target=GUARD_CHAIN))
    return out


def interfaces_named(policy: VoipPolicy) -> dict[str, str]:
    """Interface name -> what the config calls it, for a clear error when one is missing."""
    named = {policy.cellular_interface: "links.cellular.interface"}
    if policy.primary_interface:
        named[policy.primary_interface] = "links.primary.interface"
    for lan in policy.lan_interfaces:
        named[lan] = "voip.lan_interfaces"
    return named
