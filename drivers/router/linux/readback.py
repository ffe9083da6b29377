"""Pure judgement of what the Linux driver read back from the kernel.

The driver dumps nftables (`nft -j`) and netlink, turns the dumps into the plain values
of `rules.py`, and asks here what differs from the plan. Drift is reported as one
sentence per difference, for a person reading `cpe-agent status`. No I/O, no logging.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from drivers.types import LinkEvent, VoipPolicy

from .rules import (
    AGENT_PROTO,
    COUNTER_NAME,
    PRIORITY_NUMBERS,
    SPLIT_COUNTERS,
    TABLE_FAMILY,
    TABLE_NAME,
    Interval,
    NftPlan,
    RouteSpec,
    RuleSpec,
    build_routes,
    build_source_rules,
    build_switch_rule,
    merge_spans,
)


@dataclass(frozen=True)
class NftListing:
    """The parts of `nft -j list table inet cpe_agent` that matter, normalised."""

    chains: Mapping[str, tuple[str, str, int]]  # name -> (type, hook, priority number)
    rule_comments: Mapping[str, tuple[str, ...]]  # chain -> comments (None -> "")
    sets: Mapping[str, tuple[Interval, ...]]
    counter: tuple[int, int] | None  # (packets, bytes)
    #: The split counters found (name -> (packets, bytes)); see rules.SPLIT_COUNTERS.
    counters: Mapping[str, tuple[int, int]] = field(default_factory=dict)

    def split_bytes(self, name: str) -> int | None:
        found = self.counters.get(name)
        return found[1] if found is not None else None


def parse_listing(document: Mapping[str, Any]) -> NftListing:
    """Normalise `nft -j list table` output; unknown objects are ignored, not fatal."""
    chains: dict[str, tuple[str, str, int]] = {}
    comments: dict[str, list[str]] = {}
    sets: dict[str, tuple[Interval, ...]] = {}
    counter = None
    named: dict[str, tuple[int, int]] = {}
    for item in document.get("nftables", []):
        if "chain" in item:
            chain = item["chain"]
            hooked = (chain.get("type", ""), chain.get("hook", ""), chain.get("prio", 0))
            chains[chain["name"]] = hooked
            comments.setdefault(chain["name"], [])
        elif "rule" in item:
            rule = item["rule"]
            comments.setdefault(rule["chain"], []).append(rule.get("comment") or "")
        elif "set" in item:
            nft_set = item["set"]
            sets[nft_set["name"]] = _parse_elements(nft_set.get("elem", []))
        elif "counter" in item and item["counter"].get("name") == COUNTER_NAME:
            found = item["counter"]
            counter = (int(found.get("packets", 0)), int(found.get("bytes", 0)))
        elif "counter" in item and item["counter"].get("name") in SPLIT_COUNTERS:
            found = item["counter"]
            named[found["name"]] = (int(found.get("packets", 0)), int(found.get("bytes", 0)))
    return NftListing(chains, {k: tuple(v) for k, v in comments.items()}, sets, counter, named)


def _parse_elements(elements: Iterable[Any]) -> tuple[Interval, ...]:
    spans = []
    for element in elements:
        if isinstance(element, dict) and "elem" in element:
            element = element["elem"].get("val")
        if isinstance(element, str):
            address = int(ipaddress.IPv4Address(element))
            spans.append((address, address))
        elif isinstance(element, dict) and "prefix" in element:
            prefix = element["prefix"]
            network = ipaddress.IPv4Network(f"{prefix['addr']}/{prefix['len']}", strict=False)
            spans.append((int(network.network_address), int(network.broadcast_address)))
        elif isinstance(element, dict) and "range" in element:
            start, end = element["range"]
            spans.append((int(ipaddress.IPv4Address(start)), int(ipaddress.IPv4Address(end))))
    return merge_spans(spans)


def _show(spans: Iterable[Interval]) -> str:
    parts: list[str] = []
    for start, end in spans:
        low, high = ipaddress.IPv4Address(start), ipaddress.IPv4Address(end)
        nets = list(ipaddress.summarize_address_range(low, high))
        parts.extend(str(n) for n in nets)
    return ", ".join(parts) or "nothing"


def nft_drift(plan: NftPlan, listing: NftListing | None) -> list[str]:
    """One sentence per way the installed table differs from the plan (empty: in sync)."""
    where = f"the nftables table {TABLE_FAMILY} {TABLE_NAME}"
    if listing is None:
        return [f"{where} is missing"]
    drift = []
    for chain in plan.chains:
        seen = listing.chains.get(chain.name)
        if seen is None:
            drift.append(f"{where} has no chain {chain.name}")
            continue
        wanted = (chain.type, chain.hook, PRIORITY_NUMBERS[chain.priority])
        if seen != wanted:
            drift.append(f"the nftables chain {chain.name} is hooked as {seen}, not {wanted}")
        if listing.rule_comments.get(chain.name, ()) != chain.rule_comments:
            drift.append(f"the nftables chain {chain.name} holds rules the agent did not write")
    for extra in sorted(set(listing.chains) - {c.name for c in plan.chains}):
        drift.append(f"{where} has an extra chain {extra}")
    for name, wanted_spans in plan.sets.items():
        seen_spans = listing.sets.get(name)
        if seen_spans is None:
            drift.append(f"{where} has no set {name}")
        elif seen_spans != wanted_spans:
            drift.append(
                f"the nftables set {name} holds {_show(seen_spans)} "
                f"instead of {_show(wanted_spans)}"
            )
    if listing.counter is None:
        drift.append(f"{where} has no counter {COUNTER_NAME}")
    for name in SPLIT_COUNTERS:
        if name not in listing.counters:
            drift.append(f"{where} has no counter {name}")
    return drift


def is_agent_rule(rule: RuleSpec, policy: VoipPolicy | None) -> bool:
    if rule.proto == AGENT_PROTO:
        return True
    if policy is None:
        return False
    priorities = (policy.rule_priority - 1, policy.rule_priority)
    return rule.table == policy.cellular_table_id and rule.priority in priorities


def reconcile(
    wanted: Iterable[RuleSpec | RouteSpec], seen: Iterable[RuleSpec | RouteSpec]
) -> tuple[list[Any], list[Any]]:
    """(to add, to delete) so that the agent's items equal `wanted`; protocol is ignored
    in the comparison because an older kernel may not report FRA_PROTOCOL."""

    def key(item: RuleSpec | RouteSpec) -> RuleSpec | RouteSpec:
        return _replace_proto(item)

    wanted_keys = {key(w): w for w in wanted}
    seen_list = list(seen)
    seen_keys = {key(s) for s in seen_list}
    to_add = [w for k, w in wanted_keys.items() if k not in seen_keys]
    to_delete = [s for s in seen_list if key(s) not in wanted_keys]
    return to_add, to_delete


def _replace_proto(item: RuleSpec | RouteSpec) -> RuleSpec | RouteSpec:
    if isinstance(item, RuleSpec):
        return RuleSpec(item.priority, item.table, item.src, item.fwmark, item.fwmask, 0)
    return RouteSpec(item.table, item.gateway, item.interface, item.dst, 0)


def routing_drift(
    policy: VoipPolicy,
    cellular_addresses: Iterable[str] | None,
    routes: Iterable[RouteSpec],
    rules: Iterable[RuleSpec],
) -> list[str]:
    """Sentences for missing or stray routing items among the agent's own (`routes` are the
    agent's routes plus any default route in the cellular table; `rules` the agent's rules;
    `cellular_addresses` None when the cellular interface does not exist).

    Whether the switch rule should be present is the agent's decision, read back as
    `voip_path`; only a switch rule that differs from the policy counts as drift."""
    drift = []
    rules = list(rules)
    table = policy.cellular_table_id
    wanted = _replace_proto(build_routes(policy)[0])
    routes = list(routes)
    defaults = [r for r in routes if r.table == table and r.dst == "0.0.0.0/0"]
    if not defaults:
        drift.append(f"the cellular routing table {table} has no default route")
    elif all(_replace_proto(r) != wanted for r in defaults):
        drift.append(
            f"the cellular routing table {table} routes {defaults[0].describe()} "
            f"instead of {wanted.describe()}"
        )
    for route in routes:
        if route.proto == AGENT_PROTO and route not in defaults and _replace_proto(route) != wanted:
            drift.append(f"a stale agent route remains: {route.describe()}")
    addresses = list(cellular_addresses or ())
    if cellular_addresses is None:
        drift.append(f"the cellular interface {policy.cellular_interface} is missing")
    elif not addresses:
        drift.append(f"{policy.cellular_interface} has no IPv4 address to route from")
    add, delete = reconcile(wanted_rules(policy, addresses, rules), rules)
    drift += [f"the rule '{r.describe()}' is missing" for r in add]
    drift += [f"a stale agent rule remains: '{r.describe()}'" for r in delete]
    return drift


def switch_is_on(rules: Iterable[RuleSpec]) -> bool:
    """VoIP goes by the cellular link when any agent rule matches on the firewall mark."""
    return any(r.fwmark is not None for r in rules)


def wanted_rules(
    policy: VoipPolicy, cellular_addresses: Iterable[str], seen: Iterable[RuleSpec]
) -> tuple[RuleSpec, ...]:
    """The agent's rules as they should be, keeping the switch where it is: re-applying
    the policy must never move VoIP (only `set_voip_path` does)."""
    rules = build_source_rules(policy, cellular_addresses)
    if switch_is_on(seen):
        rules = (build_switch_rule(policy), *rules)
    return rules


def rule_from_message(message: Mapping[str, Any]) -> RuleSpec:
    """A netlink rule (pyroute2 fibmsg) as a RuleSpec; tables above 255 live in FRA_TABLE."""
    src = message.get("src")
    return RuleSpec(
        priority=message.get("priority") or 0,
        table=message.get("table") or message["table"],
        src=f"{src}/{message['src_len']}" if src else None,
        fwmark=message.get("fwmark"),
        fwmask=message.get("fwmask"),
        proto=message.get("protocol") or 0,
    )


def route_from_message(message: Mapping[str, Any], names: Mapping[int, str]) -> RouteSpec:
    """A netlink route (pyroute2 rtmsg) as a RouteSpec; `names` maps ifindex to name."""
    oif = message.get("oif")
    return RouteSpec(
        table=message.get("table") or message["table"],
        gateway=message.get("gateway"),
        interface=names.get(oif, str(oif or "")) if oif is not None else "",
        dst=f"{message.get('dst') or '0.0.0.0'}/{message['dst_len']}",
        proto=message["proto"],
    )


# --- conntrack and links --------------------------------------------------------------

IPPROTO_TCP = 6
IPPROTO_UDP = 17
#: Conntrack status bit: the flow saw traffic both ways for a while (not a probe).
IPS_ASSURED = 1 << 2
#: An RTP flow counts as carrying a call when its conntrack timeout was refreshed to the
#: UDP stream timeout within this many seconds (each packet refreshes it).
ACTIVE_WITHIN_S = 5
IFF_UP = 0x1
IFF_LOWER_UP = 0x10000


def voip_flow_kind(
    policy: VoipPolicy,
    networks: Iterable[ipaddress.IPv4Network],
    proto: int | None,
    daddr: str | None,
    dport: int | None,
) -> str | None:
    """'sip' or 'rtp' for a flow the marking rules steer (by its original tuple), else None."""
    if daddr is None or dport is None or proto not in (IPPROTO_UDP, IPPROTO_TCP):
        return None
    try:
        address = ipaddress.IPv4Address(daddr)
    except ValueError:
        return None
    if not any(address in network for network in networks):
        return None
    if dport in policy.sip_ports:
        return "sip"
    if proto == IPPROTO_UDP and policy.rtp_port_min <= dport <= policy.rtp_port_max:
        return "rtp"
    return None


def rtp_is_active(status: int | None, timeout_s: int | None, stream_timeout_s: int) -> bool:
    """An assured UDP flow's timeout is reset to the stream timeout by every packet, so a
    timeout close to it means a packet passed within the last ACTIVE_WITHIN_S seconds."""
    if status is None or timeout_s is None or not status & IPS_ASSURED:
        return False
    return timeout_s >= stream_timeout_s - ACTIVE_WITHIN_S


def carrier_up(flags: int, operstate: str | None) -> bool:
    """Carrier as the kernel sees it: administratively up, lower layer up, and not an
    operstate that says the link cannot pass traffic (DORMANT, LOWERLAYERDOWN, ...)."""
    if not flags & IFF_UP or not flags & IFF_LOWER_UP:
        return False
    return operstate in (None, "UP", "UNKNOWN")


def carrier_event(
    known: dict[int, tuple[str, bool]], message: Mapping[str, Any]
) -> LinkEvent | None:
    """Update `known` from one link message; an event only when the carrier changed."""
    index = message["index"]
    previous = known.get(index)
    if message.get("event") == "RTM_DELLINK":
        known.pop(index, None)
        name, up = message.get("ifname") or (previous[0] if previous else str(index)), False
    elif message.get("event") == "RTM_NEWLINK":
        name, up = (
            message.get("ifname") or str(index),
            carrier_up(message["flags"], message.get("operstate")),
        )
        known[index] = (name, up)
    else:
        return None
    was_up = previous[1] if previous else False
    return LinkEvent(name, up) if up != was_up else None


def carrier_resync(
    before: dict[int, tuple[str, bool]], after: dict[int, tuple[str, bool]]
) -> Iterator[LinkEvent]:
    for index in sorted(set(before) | set(after)):
        name, was_up = before.get(index, (None, False))
        new_name, up = after.get(index, (name, False))
        if up != was_up:
            yield LinkEvent(new_name or name or str(index), up)
