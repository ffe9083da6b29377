"""Pure builders for what the Linux driver installs: the nftables script and routing items.

Everything here is a function of a VoipPolicy (and of facts the driver read, passed in
as arguments), so the whole ruleset can be checked from tables without a kernel. No I/O,
no clock, no logging. `readback.py` judges what the driver reads back against these.

Ownership markers, so that read-back and removal find only the agent's own items:
the nftables table `inet cpe_agent`; routes with protocol AGENT_PROTO (241); rules with
FRA_PROTOCOL AGENT_PROTO (kernel 4.17+), or, for a kernel that drops FRA_PROTOCOL, the
policy's table id at one of the policy's two priorities.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from drivers.errors import NeedsHumanError
from drivers.router.policy_checks import check_gateway, check_port, ipv4_networks
from drivers.types import AGENT_TAG, VoipPolicy

TABLE_FAMILY = "inet"
TABLE_NAME = "cpe_agent"
COUNTER_NAME = "blocked_on_cellular"
#: Named counters of what crossed the cellular link, both directions: VoIP, and the
#: router's own (the agent's) traffic. Connections are told apart by conntrack mark bits
#: set when they start (VoIP from the LAN in prerouting, locally originated in output),
#: so replies coming in by LTE count with the flow they answer.
VOICE_COUNTER = "voice_on_cellular"
AGENT_COUNTER = "agent_on_cellular"
SPLIT_COUNTERS = (VOICE_COUNTER, AGENT_COUNTER)
#: Conntrack mark bits (OR-ed in, matched under themselves, like the packet mark): high
#: bits, clear of mwan3's default 0x3F00 and of the agent's packet mark.
CT_MARK_VOICE = 0x10000000
CT_MARK_AGENT = 0x20000000
VOIP_SET = "voip_prefixes"
AGENT_SET = "agent_prefixes"
#: Routing protocol number marking the agent's routes and rules (unassigned in rt_protos).
AGENT_PROTO = 241
#: Kernel table ids that belong to the kernel itself (unspec, default, main, local).
RESERVED_TABLES = frozenset({0, 253, 254, 255})
#: nftables priority keywords and the numbers `nft -j` reports for them.
PRIORITY_NUMBERS = {"mangle": -150, "filter": 0, "srcnat": 100}
#: The agent's base chains: name -> (type, hook, priority, why; the why goes in a comment).
CHAINS = {
    "voip_mark_prerouting": (
        "filter",
        "prerouting",
        "mangle",
        "mark VoIP from the LAN; in failover the switch rule routes it by the cellular table",
    ),
    "agent_mark_output": ("route", "output", "mangle", "mark the agent's own traffic like VoIP"),
    "cellular_guard_forward": (
        "filter",
        "forward",
        "filter",
        "only VoIP may leave by the cellular link; the plan allows nothing else",
    ),
    "cellular_nat_postrouting": (
        "nat",
        "postrouting",
        "srcnat",
        "masquerade what leaves by the cellular link",
    ),
    "cellular_split_prerouting": (
        "filter",
        "prerouting",
        "filter",
        "count VoIP and the agent's own bytes coming in by the cellular link",
    ),
    "cellular_split_postrouting": (
        "filter",
        "postrouting",
        "filter",
        "count VoIP and the agent's own bytes leaving by the cellular link",
    ),
}
#: Linux interface names: at most 15 bytes, no slash, colon, whitespace or quotes.
_IFNAME = re.compile(r'^[^\s/:"\\]{1,15}$')

Interval = tuple[int, int]


@dataclass(frozen=True)
class ChainSpec:
    name: str
    type: str
    hook: str
    priority: str
    #: One comment per rule, in order; each ends in a digest of the rule's own text.
    rule_comments: tuple[str, ...]


@dataclass(frozen=True)
class NftPlan:
    """The nftables script that replaces the agent's table atomically, and what to expect
    when reading it back."""

    script: str
    chains: tuple[ChainSpec, ...]
    #: Set name -> merged address intervals (as integers), for comparison with read-back.
    sets: Mapping[str, tuple[Interval, ...]]


@dataclass(frozen=True)
class RouteSpec:
    table: int
    gateway: str | None
    interface: str
    #: Only default routes are installed; the destination is kept for read-back of strays.
    dst: str = "0.0.0.0/0"
    proto: int = AGENT_PROTO

    def describe(self) -> str:
        via = f" via {self.gateway}" if self.gateway else ""
        dst = "default" if self.dst == "0.0.0.0/0" else self.dst
        return f"{dst}{via} dev {self.interface} table {self.table}"


@dataclass(frozen=True)
class RuleSpec:
    priority: int
    table: int
    #: Source prefix ("100.64.100.2/32") for the rule keeping LTE-sourced traffic on LTE.
    src: str | None = None
    fwmark: int | None = None
    fwmask: int | None = None
    proto: int = AGENT_PROTO

    def describe(self) -> str:
        match = "all"
        if self.src is not None:
            match = f"from {self.src}"
        if self.fwmark is not None:
            match = f"fwmark {self.fwmark:#x}/{(self.fwmask or 0xFFFFFFFF):#x}"
        return f"priority {self.priority} {match} lookup {self.table}"


# --- validation ---------------------------------------------------------------------


def voip_networks(policy: VoipPolicy) -> tuple[ipaddress.IPv4Network, ...]:
    """The VoIP prefixes as networks; raises on anything the driver cannot honour."""
    return _networks(policy.voip_prefixes, "voip_prefixes")


def validate(policy: VoipPolicy) -> None:
    """Reject a policy that would install something wrong, with one sentence per cause.

    The script is built by string formatting, so interface names are checked here too:
    a quote in a name must never reach `nft -f`.
    """
    names = [policy.cellular_interface, *policy.lan_interfaces]
    if policy.primary_interface:
        names.append(policy.primary_interface)
    for name in names:
        if not _IFNAME.match(name) or name in (".", ".."):
            raise NeedsHumanError(
                f"{name!r} is not a valid Linux interface name; fix the interface in the config."
            )
    if not policy.lan_interfaces:
        raise NeedsHumanError("The policy names no LAN interface; set voip.lan_interfaces.")
    if policy.cellular_interface in policy.lan_interfaces:
        raise NeedsHumanError(
            f"{policy.cellular_interface} is both the cellular and a LAN interface; fix the config."
        )
    if not policy.voip_prefixes:
        raise NeedsHumanError("The policy lists no VoIP prefixes; set voip.sbc_addresses.")
    voip_networks(policy)
    _networks(policy.agent_prefixes, "agent_prefixes")
    for port in policy.sip_ports:
        check_port(port, "a SIP port")
    check_port(policy.rtp_port_min, "rtp_port_min")
    check_port(policy.rtp_port_max, "rtp_port_max")
    if policy.rtp_port_min > policy.rtp_port_max:
        raise NeedsHumanError(
            f"rtp_port_min {policy.rtp_port_min} is above rtp_port_max {policy.rtp_port_max}; "
            "swap them in the config."
        )
    if not 0 < policy.voip_mark <= 0xFFFFFFFF:
        raise NeedsHumanError("voip_mark must be a non-zero 32-bit value; fix it in the config.")
    table = policy.cellular_table_id
    if table in RESERVED_TABLES or not 0 < table < 2**32:
        raise NeedsHumanError(
            f"Routing table {table} is reserved or out of range; pick another cellular_table_id."
        )
    if not 2 <= policy.rule_priority <= 32765:
        raise NeedsHumanError(
            f"rule_priority {policy.rule_priority} must lie in 2..32765 (before the main table)."
        )
    check_gateway(policy.cellular_gateway)


def _networks(prefixes: Iterable[str], what: str) -> tuple[ipaddress.IPv4Network, ...]:
    return ipv4_networks(prefixes, what, driver="Linux", strict=True)


# --- nftables -----------------------------------------------------------------------


def merge_spans(spans: Iterable[Interval]) -> tuple[Interval, ...]:
    """Sorted, merged inclusive integer intervals: how nft's auto-merge holds a set."""
    merged: list[list[int]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return tuple((start, end) for start, end in merged)


def intervals(networks: Iterable[ipaddress.IPv4Network]) -> tuple[Interval, ...]:
    return merge_spans((int(n.network_address), int(n.broadcast_address)) for n in networks)


def _elements(networks: Iterable[ipaddress.IPv4Network]) -> str:
    return ", ".join(str(n) for n in ipaddress.collapse_addresses(networks))


def _ports(ports: Iterable[int]) -> str:
    unique = sorted(set(ports))
    return str(unique[0]) if len(unique) == 1 else "{ " + ", ".join(map(str, unique)) + " }"


def _names(names: Iterable[str]) -> str:
    quoted = [f'"{n}"' for n in dict.fromkeys(names)]
    return quoted[0] if len(quoted) == 1 else "{ " + ", ".join(quoted) + " }"


def _rule(role: str, text: str) -> tuple[str, str]:
    """A rule line and its comment; the digest lets read-back spot a hand-edited rule."""
    digest = hashlib.sha256(text.encode()).hexdigest()[:10]
    comment = f"{AGENT_TAG} {role} {digest}"
    return f'{text} comment "{comment}"', comment


def build_nft(
    policy: VoipPolicy,
    *,
    blocked_packets: int = 0,
    blocked_bytes: int = 0,
    counters: Mapping[str, tuple[int, int]] | None = None,
) -> NftPlan:
    """The one-transaction script: create-if-absent, delete, define (no window without rules).

    `blocked_*` and `counters` (name -> (packets, bytes) of the split counters) carry the
    counters over a re-apply, so repairing drift loses no history.
    """
    counters = counters or {}
    validate(policy)
    mark = f"{policy.voip_mark:#x}"
    # OR the bit pattern in rather than overwrite: keeps marks the customer's own
    # config sets (QoS, mwan3) and still matches the `fwmark mark/mark` rule.
    set_mark = f"meta mark set meta mark | {mark}"
    lan = f"iifname {_names(policy.lan_interfaces)} ip daddr @{VOIP_SET}"
    cell = f'"{policy.cellular_interface}"'

    prerouting: list[tuple[str, str]] = []
    if policy.sip_ports:
        sip = _ports(policy.sip_ports)
        prerouting.append(_rule("sip-udp", f"{lan} udp dport {sip} {set_mark}"))
        prerouting.append(_rule("sip-tcp", f"{lan} tcp dport {sip} {set_mark}"))
    low, high = policy.rtp_port_min, policy.rtp_port_max
    rtp = str(low) if low == high else f"{low}-{high}"
    prerouting.append(_rule("rtp-udp", f"{lan} udp dport {rtp} {set_mark}"))
    if policy.match_dscp_ef:
        prerouting.append(_rule("dscp-ef", f"{lan} ip dscp ef {set_mark}"))
    # Every packet of a VoIP flow carries the mark from here on; the connection keeps a
    # bit of its own, so the replies coming in by LTE count as VoIP too.
    prerouting.append(
        _rule(
            "voice-ct",
            f"iifname {_names(policy.lan_interfaces)} meta mark & {mark} == {mark} "
            f"{_ct_set(CT_MARK_VOICE)}",
        )
    )
    output = []
    if policy.agent_prefixes:
        output.append(_rule("agent-own", f"ip daddr @{AGENT_SET} {set_mark}"))
    # What the router itself starts is the agent's (its MQTT, probes and look-ups).
    output.append(_rule("agent-ct", f"ct direction original {_ct_set(CT_MARK_AGENT)}"))
    guard = [
        _rule(
            "guard",
            f"oifname {cell} meta mark & {mark} != {mark} counter name {COUNTER_NAME} drop",
        )
    ]
    nat = [_rule("masquerade", f"oifname {cell} masquerade")]
    split_in = [
        _rule(f"{name}-in", f"iifname {cell} {_ct_has(bit)} counter name {name}")
        for name, bit in ((VOICE_COUNTER, CT_MARK_VOICE), (AGENT_COUNTER, CT_MARK_AGENT))
    ]
    split_out = [
        _rule(f"{name}-out", f"oifname {cell} {_ct_has(bit)} counter name {name}")
        for name, bit in ((VOICE_COUNTER, CT_MARK_VOICE), (AGENT_COUNTER, CT_MARK_AGENT))
    ]

    rules_by_chain = {
        "voip_mark_prerouting": prerouting,
        "agent_mark_output": output,
        "cellular_guard_forward": guard,
        "cellular_nat_postrouting": nat,
        "cellular_split_prerouting": split_in,
        "cellular_split_postrouting": split_out,
    }
    voip = voip_networks(policy)
    agent = _networks(policy.agent_prefixes, "agent_prefixes")
    lines = [
        f"table {TABLE_FAMILY} {TABLE_NAME} {{}}",
        f"delete table {TABLE_FAMILY} {TABLE_NAME}",
        f"table {TABLE_FAMILY} {TABLE_NAME} {{",
        f'\tcomment "{AGENT_TAG}: VoIP-only cellular failover; managed, edits are undone"',
        f"\tcounter {COUNTER_NAME} {{",
        f'\t\tcomment "{AGENT_TAG}: non-VoIP packets stopped before the cellular link"',
        f"\t\tpackets {int(blocked_packets)} bytes {int(blocked_bytes)}",
        "\t}",
    ]
    for name, what in (
        (VOICE_COUNTER, "VoIP bytes by the cellular link, both ways"),
        (AGENT_COUNTER, "the agent's own bytes by the cellular link, both ways"),
    ):
        packets, octets = counters.get(name, (0, 0))
        lines += [
            f"\tcounter {name} {{",
            f'\t\tcomment "{AGENT_TAG}: {what}"',
            f"\t\tpackets {int(packets)} bytes {int(octets)}",
            "\t}",
        ]
    for name, networks, what in ((VOIP_SET, voip, "VoIP provider"), (AGENT_SET, agent, "agent")):
        lines += [
            f"\tset {name} {{",
            "\t\ttype ipv4_addr",
            "\t\tflags interval",
            "\t\tauto-merge",
            f'\t\tcomment "{AGENT_TAG}: {what} prefixes"',
        ]
        if networks:
            lines.append(f"\t\telements = {{ {_elements(networks)} }}")
        lines.append("\t}")
    specs = []
    for name, (kind, hook, priority, why) in CHAINS.items():
        rules = rules_by_chain[name]
        lines += [
            f"\tchain {name} {{",
            f'\t\tcomment "{AGENT_TAG}: {why}"',
            f"\t\ttype {kind} hook {hook} priority {priority}; policy accept;",
        ]
        lines += [f"\t\t{text}" for text, _ in rules]
        lines.append("\t}")
        specs.append(ChainSpec(name, kind, hook, priority, tuple(c for _, c in rules)))
    lines.append("}")
    return NftPlan(
        script="\n".join(lines) + "\n",
        chains=tuple(specs),
        sets={VOIP_SET: intervals(voip), AGENT_SET: intervals(agent)},
    )


def _ct_set(bit: int) -> str:
    return f"ct mark set ct mark | {bit:#x}"


def _ct_has(bit: int) -> str:
    return f"ct mark & {bit:#x} == {bit:#x}"


def removal_script() -> str:
    """Delete the agent's table whether or not it exists, in one transaction."""
    return f"table {TABLE_FAMILY} {TABLE_NAME} {{}}\ndelete table {TABLE_FAMILY} {TABLE_NAME}\n"


# --- routing ------------------------------------------------------------------------


def build_routes(policy: VoipPolicy) -> tuple[RouteSpec, ...]:
    return (
        RouteSpec(policy.cellular_table_id, policy.cellular_gateway, policy.cellular_interface),
    )


def build_source_rules(
    policy: VoipPolicy, cellular_addresses: Iterable[str]
) -> tuple[RuleSpec, ...]:
    """Traffic sourced from an LTE address (the agent's LTE probes) always leaves by LTE."""
    addresses = sorted({str(ipaddress.IPv4Address(a.split("/")[0])) for a in cellular_addresses})
    return tuple(
        RuleSpec(policy.rule_priority, policy.cellular_table_id, src=f"{a}/32") for a in addresses
    )


def build_switch_rule(policy: VoipPolicy) -> RuleSpec:
    """The switch: VoIP-marked packets look up the cellular table (ahead of the source rule)."""
    return RuleSpec(
        policy.rule_priority - 1,
        policy.cellular_table_id,
        fwmark=policy.voip_mark,
        fwmask=policy.voip_mark,
    )
