"""The Linux driver's pure parts, from tables: the nftables script, the routing items,
and the judgement of what the driver reads back (shaped as nft 1.0.6 and netlink give it).

The script is applied to a real kernel in tests/netns/test_linux_driver.py.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import pytest

from drivers import registry
from drivers.errors import NeedsHumanError, UnsupportedError
from drivers.router.linux import readback, rules
from drivers.router.linux.rules import RouteSpec, RuleSpec
from drivers.types import VoipPolicy

POLICY = VoipPolicy(
    primary_interface="wan0",
    cellular_interface="lte0",
    cellular_gateway="100.64.100.1",
    lan_interfaces=("lan0",),
    voip_prefixes=("203.0.113.10/32", "203.0.113.64/26"),
    agent_prefixes=("192.0.2.53/32",),
)


def policy(**changes: Any) -> VoipPolicy:
    return dataclasses.replace(POLICY, **changes)


def chain_body(script: str, chain: str) -> str:
    match = re.search(rf"chain {chain} {{\n(.*?)\n\t}}", script, re.S)
    assert match, f"no chain {chain} in the script"
    return match.group(1)


# --- the script -----------------------------------------------------------------------


def test_script_replaces_the_table_in_one_transaction() -> None:
    lines = rules.build_nft(POLICY).script.splitlines()
    assert lines[:3] == [
        "table inet cpe_agent {}",
        "delete table inet cpe_agent",
        "table inet cpe_agent {",
    ]
    assert rules.removal_script() == "table inet cpe_agent {}\ndelete table inet cpe_agent\n"


def test_script_holds_set_marks_guard_and_masquerade() -> None:
    script = rules.build_nft(POLICY).script
    assert "elements = { 203.0.113.10/32, 203.0.113.64/26 }" in script
    assert "flags interval" in script
    prerouting = chain_body(script, "voip_mark_prerouting")
    assert "type filter hook prerouting priority mangle; policy accept;" in prerouting
    assert (
        'iifname "lan0" ip daddr @voip_prefixes udp dport { 5060, 5061 } '
        "meta mark set meta mark | 0x4350" in prerouting
    )
    assert "tcp dport { 5060, 5061 } meta mark set meta mark | 0x4350" in prerouting
    assert "udp dport 10000-20000 meta mark set meta mark | 0x4350" in prerouting
    assert "ip daddr @voip_prefixes ip dscp ef meta mark set" in prerouting
    output = chain_body(script, "agent_mark_output")
    assert "type route hook output priority mangle" in output
    assert "ip daddr @agent_prefixes meta mark set meta mark | 0x4350" in output
    guard = chain_body(script, "cellular_guard_forward")
    assert (
        'oifname "lte0" meta mark & 0x4350 != 0x4350 counter name blocked_on_cellular drop' in guard
    )
    nat = chain_body(script, "cellular_nat_postrouting")
    assert "type nat hook postrouting priority srcnat" in nat
    assert 'oifname "lte0" masquerade' in nat
    assert "counter blocked_on_cellular {" in script and "packets 0 bytes 0" in script


def test_every_item_says_it_is_the_agents() -> None:
    plan = rules.build_nft(POLICY)
    for line in plan.script.splitlines():
        if "meta mark" in line or line.endswith("masquerade") or " masquerade comment" in line:
            assert 'comment "cpe-agent ' in line
    for chain in plan.chains:
        assert all(c.startswith("cpe-agent ") for c in chain.rule_comments)
        assert f'chain {chain.name} {{\n\t\tcomment "cpe-agent: ' in plan.script


@pytest.mark.parametrize(
    ("changes", "present", "absent"),
    [
        ({"sip_ports": (5060,)}, ["udp dport 5060 meta", "tcp dport 5060 meta"], ["{ 5060"]),
        ({"sip_ports": ()}, ["udp dport 10000-20000"], ["sip-udp", "sip-tcp"]),
        ({"rtp_port_min": 16384, "rtp_port_max": 16384}, ["udp dport 16384 meta"], ["16384-"]),
        ({"rtp_port_min": 16384, "rtp_port_max": 32767}, ["udp dport 16384-32767"], []),
        ({"match_dscp_ef": False}, [], ["dscp"]),
        ({"lan_interfaces": ("lan0", "lan1")}, ['iifname { "lan0", "lan1" }'], []),
        ({"voip_mark": 0x10000}, ["meta mark | 0x10000", "& 0x10000 != 0x10000"], ["0x4350"]),
        ({"cellular_interface": "wwan0"}, ['oifname "wwan0" masquerade'], ['"lte0"']),
        # Overlapping and adjacent prefixes are merged, as nft's auto-merge would.
        (
            {"voip_prefixes": ("203.0.113.0/25", "203.0.113.128/25", "203.0.113.10/32")},
            ["elements = { 203.0.113.0/24 }"],
            [],
        ),
    ],
)
def test_script_renders_ports_ranges_and_names(
    changes: dict[str, Any], present: list[str], absent: list[str]
) -> None:
    script = rules.build_nft(policy(**changes)).script
    for text in present:
        assert text in script
    for text in absent:
        assert text not in script


def test_empty_agent_prefixes_leave_an_empty_set_and_no_rule() -> None:
    plan = rules.build_nft(policy(agent_prefixes=()))
    # comment + hook + the agent's conntrack bit only
    assert chain_body(plan.script, "agent_mark_output").count("\n") == 2
    assert "agent-own" not in chain_body(plan.script, "agent_mark_output")
    agent_set = re.search(r"set agent_prefixes \{(.*?)\n\t\}", plan.script, re.S)
    assert agent_set and "elements" not in agent_set.group(1)
    assert plan.sets["agent_prefixes"] == ()
    comments = dict((c.name, c.rule_comments) for c in plan.chains)["agent_mark_output"]
    assert [c.split()[1] for c in comments] == ["agent-ct"]


def test_counter_history_is_carried_over() -> None:
    script = rules.build_nft(POLICY, blocked_packets=7, blocked_bytes=420).script
    assert "packets 7 bytes 420" in script


def test_rule_digests_change_with_the_rule() -> None:
    before = rules.build_nft(POLICY).chains[0].rule_comments
    after = rules.build_nft(policy(sip_ports=(5060, 5080))).chains[0].rule_comments
    assert before[0] != after[0]  # sip-udp changed
    assert before[2] == after[2]  # rtp-udp did not


@pytest.mark.parametrize(
    ("changes", "error", "words"),
    [
        ({"cellular_interface": 'lte0" accept'}, NeedsHumanError, "not a valid Linux interface"),
        ({"lan_interfaces": ("a-name-longer-than-15",)}, NeedsHumanError, "interface name"),
        ({"lan_interfaces": ()}, NeedsHumanError, "no LAN interface"),
        ({"lan_interfaces": ("lte0",)}, NeedsHumanError, "both the cellular and a LAN"),
        ({"voip_prefixes": ()}, NeedsHumanError, "no VoIP prefixes"),
        ({"voip_prefixes": ("203.0.113.10/24",)}, NeedsHumanError, "host bits"),
        ({"voip_prefixes": ("sbc.example",)}, NeedsHumanError, "not a network prefix"),
        ({"voip_prefixes": ("2001:db8::/32",)}, UnsupportedError, "IPv6"),
        ({"agent_prefixes": ("192.0.2.1/8",)}, NeedsHumanError, "agent_prefixes"),
        ({"sip_ports": (0,)}, NeedsHumanError, "not a port number"),
        ({"rtp_port_max": 70000}, NeedsHumanError, "rtp_port_max"),
        ({"rtp_port_min": 20001}, NeedsHumanError, "is above rtp_port_max"),
        ({"voip_mark": 0}, NeedsHumanError, "non-zero"),
        ({"cellular_table_id": 254}, NeedsHumanError, "reserved"),
        ({"rule_priority": 1}, NeedsHumanError, "2..32765"),
        ({"rule_priority": 32766}, NeedsHumanError, "2..32765"),
        ({"cellular_gateway": "modem.local"}, NeedsHumanError, "not an IPv4 address"),
    ],
)
def test_bad_policies_are_refused_with_a_sentence(
    changes: dict[str, Any], error: type[Exception], words: str
) -> None:
    with pytest.raises(error, match=words):
        rules.build_nft(policy(**changes))


# --- routing items --------------------------------------------------------------------


def test_routing_items() -> None:
    assert rules.build_routes(POLICY) == (RouteSpec(4241, "100.64.100.1", "lte0"),)
    assert rules.build_routes(policy(cellular_gateway=None))[0].describe() == (
        "default dev lte0 table 4241"
    )
    assert rules.build_source_rules(POLICY, ["100.64.100.2/24", "100.64.100.2/24"]) == (
        RuleSpec(4241, 4241, src="100.64.100.2/32"),
    )
    assert rules.build_source_rules(POLICY, []) == ()
    switch = rules.build_switch_rule(POLICY)
    assert switch == RuleSpec(4240, 4241, fwmark=0x4350, fwmask=0x4350)
    assert switch.describe() == "priority 4240 fwmark 0x4350/0x4350 lookup 4241"


# --- read-back: nftables --------------------------------------------------------------


def nft_listing(plan: rules.NftPlan, **overrides: Any) -> dict[str, Any]:
    """What `nft -j list table inet cpe_agent` prints for the plan (nft 1.0.6 shape;
    rule `expr` omitted, the reader does not use it)."""
    items: list[dict[str, Any]] = [
        {"metainfo": {"version": "1.0.6", "json_schema_version": 1}},
        {"table": {"family": "inet", "name": "cpe_agent", "handle": 3}},
        {
            "counter": {
                "family": "inet",
                "name": "blocked_on_cellular",
                "table": "cpe_agent",
                "handle": 5,
                "packets": overrides.get("packets", 12),
                "bytes": 720,
            }
        },
        {
            "set": {
                "family": "inet",
                "name": "voip_prefixes",
                "table": "cpe_agent",
                "type": "ipv4_addr",
                "flags": ["interval"],
                "elem": overrides.get(
                    "elem", ["203.0.113.10", {"prefix": {"addr": "203.0.113.64", "len": 26}}]
                ),
            }
        },
        {"set": {"family": "inet", "name": "agent_prefixes", "table": "cpe_agent",
                 "type": "ipv4_addr", "flags": ["interval"], "elem": ["192.0.2.53"]}},
        {"counter": {"family": "inet", "name": "voice_on_cellular", "table": "cpe_agent",
                     "handle": 6, "packets": 40, "bytes": 8000}},
        {"counter": {"family": "inet", "name": "agent_on_cellular", "table": "cpe_agent",
                     "handle": 7, "packets": 5, "bytes": 900}},
    ]  # fmt: skip
    handle = 10
    for chain in plan.chains:
        prio = rules.PRIORITY_NUMBERS[chain.priority]
        items.append(
            {
                "chain": {
                    "family": "inet",
                    "table": "cpe_agent",
                    "name": chain.name,
                    "type": chain.type,
                    "hook": chain.hook,
                    "prio": overrides.get("prio", {}).get(chain.name, prio),
                    "policy": "accept",
                }
            }
        )
        for comment in chain.rule_comments:
            handle += 1
            rule = {"family": "inet", "table": "cpe_agent", "chain": chain.name}
            items.append({"rule": {**rule, "handle": handle, "comment": comment, "expr": []}})
    items.extend(overrides.get("extra", []))
    return {"nftables": items}


def test_listing_of_the_plan_is_in_sync_and_gives_the_counter() -> None:
    plan = rules.build_nft(POLICY)
    listing = readback.parse_listing(nft_listing(plan))
    assert readback.nft_drift(plan, listing) == []
    assert listing.counter == (12, 720)


def test_set_elements_in_every_nft_form_are_understood() -> None:
    elements = [
        {"range": ["198.51.100.10", "198.51.100.20"]},
        {"prefix": {"addr": "203.0.113.0", "len": 28}},
        "203.0.113.80",
        {"elem": {"val": "192.0.2.1", "comment": "x"}},
        {"elem": {"val": {"prefix": {"addr": "192.0.2.2", "len": 31}}}},
    ]
    listing = readback.parse_listing(nft_listing(rules.build_nft(POLICY), elem=elements))
    spans = listing.sets["voip_prefixes"]
    assert spans == rules.intervals(
        rules.voip_networks(
            policy(
                voip_prefixes=(
                    "192.0.2.1/32", "192.0.2.2/31",
                    "198.51.100.10/31", "198.51.100.12/30", "198.51.100.16/30",
                    "198.51.100.20/32", "203.0.113.0/28", "203.0.113.80/32",
                )
            )
        )
    )  # fmt: skip


@pytest.mark.parametrize(
    ("overrides", "sentence"),
    [
        ({"elem": ["203.0.113.10"]}, "the nftables set voip_prefixes holds 203.0.113.10/32 "
         "instead of 203.0.113.10/32, 203.0.113.64/26"),
        ({"prio": {"cellular_guard_forward": 10}}, "the nftables chain cellular_guard_forward "
         "is hooked as ('filter', 'forward', 10), not ('filter', 'forward', 0)"),
        ({"extra": [{"rule": {"chain": "cellular_guard_forward", "handle": 99}}]},
         "the nftables chain cellular_guard_forward holds rules the agent did not write"),
        ({"extra": [{"chain": {"name": "mine", "type": "filter", "hook": "input", "prio": 0}}]},
         "the nftables table inet cpe_agent has an extra chain mine"),
    ],
)  # fmt: skip
def test_edits_to_the_table_are_drift(overrides: dict[str, Any], sentence: str) -> None:
    plan = rules.build_nft(POLICY)
    drift = readback.nft_drift(plan, readback.parse_listing(nft_listing(plan, **overrides)))
    assert drift == [sentence]


def test_a_missing_table_chain_or_counter_is_drift() -> None:
    plan = rules.build_nft(POLICY)
    assert readback.nft_drift(plan, None) == ["the nftables table inet cpe_agent is missing"]
    document = nft_listing(plan)
    document["nftables"] = [
        item
        for item in document["nftables"]
        if "counter" not in item
        and item.get("chain", {}).get("name") != "cellular_nat_postrouting"
        and item.get("rule", {}).get("chain") != "cellular_nat_postrouting"
    ]
    assert readback.nft_drift(plan, readback.parse_listing(document)) == [
        "the nftables table inet cpe_agent has no chain cellular_nat_postrouting",
        "the nftables table inet cpe_agent has no counter blocked_on_cellular",
        "the nftables table inet cpe_agent has no counter voice_on_cellular",
        "the nftables table inet cpe_agent has no counter agent_on_cellular",
    ]


def test_a_policy_change_is_drift_against_the_old_table() -> None:
    old = rules.build_nft(POLICY)
    new = rules.build_nft(policy(rtp_port_min=16384, rtp_port_max=32767))
    drift = readback.nft_drift(new, readback.parse_listing(nft_listing(old)))
    assert drift == ["the nftables chain voip_mark_prerouting holds rules the agent did not write"]


# --- read-back: routing ---------------------------------------------------------------

ROUTE = RouteSpec(4241, "100.64.100.1", "lte0")
SOURCE = RuleSpec(4241, 4241, src="100.64.100.2/32")
SWITCH = RuleSpec(4240, 4241, fwmark=0x4350, fwmask=0x4350)
ADDRESSES = ["100.64.100.2/24"]


@pytest.mark.parametrize(
    ("routes", "rules_seen", "addresses", "drift"),
    [
        ([ROUTE], [SOURCE], ADDRESSES, []),
        ([ROUTE], [SOURCE, SWITCH], ADDRESSES, []),
        ([], [SOURCE], ADDRESSES, ["the cellular routing table 4241 has no default route"]),
        (
            [RouteSpec(4241, "100.64.100.9", "lte0", proto=4)],
            [SOURCE],
            ADDRESSES,
            [
                "the cellular routing table 4241 routes default via 100.64.100.9 dev lte0 "
                "table 4241 instead of default via 100.64.100.1 dev lte0 table 4241"
            ],
        ),
        (
            [ROUTE, RouteSpec(100, "100.64.100.1", "lte0")],
            [SOURCE],
            ADDRESSES,
            ["a stale agent route remains: default via 100.64.100.1 dev lte0 table 100"],
        ),
        (
            [ROUTE],
            [],
            ADDRESSES,
            ["the rule 'priority 4241 from 100.64.100.2/32 lookup 4241' is missing"],
        ),
        (
            [ROUTE],
            [SOURCE],
            ["100.64.100.7/24"],
            [
                "the rule 'priority 4241 from 100.64.100.7/32 lookup 4241' is missing",
                "a stale agent rule remains: 'priority 4241 from 100.64.100.2/32 lookup 4241'",
            ],
        ),
        ([ROUTE], [], [], ["lte0 has no IPv4 address to route from"]),
        ([ROUTE], [], None, ["the cellular interface lte0 is missing"]),
        (
            [ROUTE],
            [SOURCE, RuleSpec(4240, 4241, fwmark=0x1, fwmask=0x1)],
            ADDRESSES,
            [
                "the rule 'priority 4240 fwmark 0x4350/0x4350 lookup 4241' is missing",
                "a stale agent rule remains: 'priority 4240 fwmark 0x1/0x1 lookup 4241'",
            ],
        ),
    ],
)
def test_routing_drift(
    routes: list[RouteSpec],
    rules_seen: list[RuleSpec],
    addresses: list[str] | None,
    drift: list[str],
) -> None:
    assert readback.routing_drift(POLICY, addresses, routes, rules_seen) == drift


def test_reconcile_ignores_the_protocol_field() -> None:
    legacy = dataclasses.replace(SOURCE, proto=0)  # a kernel that drops FRA_PROTOCOL
    assert readback.reconcile([SOURCE], [legacy]) == ([], [])
    assert readback.reconcile([SOURCE, SWITCH], [SOURCE]) == ([SWITCH], [])
    assert readback.reconcile([], [SWITCH]) == ([], [SWITCH])


def test_agent_rules_are_found_by_marker_or_by_policy_slot() -> None:
    assert readback.is_agent_rule(RuleSpec(100, 100, proto=241), None)
    assert not readback.is_agent_rule(RuleSpec(4241, 4241, proto=0), None)
    assert readback.is_agent_rule(RuleSpec(4241, 4241, proto=0), POLICY)
    assert not readback.is_agent_rule(RuleSpec(4242, 4241, proto=0), POLICY)
    assert not readback.is_agent_rule(RuleSpec(32766, 254, proto=2), POLICY)


def test_reapplying_keeps_the_switch_where_it_is() -> None:
    assert readback.wanted_rules(POLICY, ADDRESSES, [SOURCE]) == (SOURCE,)
    old_switch = RuleSpec(4240, 4241, fwmark=0x1, fwmask=0x1)
    assert readback.wanted_rules(POLICY, ADDRESSES, [old_switch]) == (SWITCH, SOURCE)


# --- read-back: conntrack and links ---------------------------------------------------

NETWORKS = rules.voip_networks(POLICY)


@pytest.mark.parametrize(
    ("proto", "daddr", "dport", "kind"),
    [
        (17, "203.0.113.10", 5060, "sip"),
        (6, "203.0.113.10", 5061, "sip"),
        (17, "203.0.113.70", 10000, "rtp"),
        (17, "203.0.113.70", 20000, "rtp"),
        (6, "203.0.113.70", 10002, None),  # RTP is UDP
        (17, "203.0.113.70", 20001, None),
        (17, "203.0.113.11", 5060, None),  # not the provider
        (1, "203.0.113.10", None, None),  # ICMP
        (17, None, 5060, None),
    ],
)
def test_voip_flows_are_recognised(
    proto: int, daddr: str | None, dport: int | None, kind: str | None
) -> None:
    assert readback.voip_flow_kind(POLICY, NETWORKS, proto, daddr, dport) == kind


@pytest.mark.parametrize(
    ("status", "timeout_s", "active"),
    [
        (0x8 | 0x4 | 0x2, 120, True),  # assured, just refreshed
        (0x8 | 0x4 | 0x2, 115, True),
        (0x8 | 0x4 | 0x2, 114, False),  # silent for over 5 s
        (0x8 | 0x2, 120, False),  # not assured: one packet each way is not a call
        (None, 120, False),
        (0x4, None, False),
    ],
)
def test_rtp_activity_from_the_conntrack_timeout(
    status: int | None, timeout_s: int | None, active: bool
) -> None:
    assert readback.rtp_is_active(status, timeout_s, 120) is active


@pytest.mark.parametrize(
    ("flags", "operstate", "up"),
    [
        (0x11043, "UP", True),
        (0x11043, "UNKNOWN", True),  # some wwan drivers never set an operstate
        (0x1003, "DOWN", False),  # no IFF_LOWER_UP: the cable or the peer is gone
        (0x11042, "DOWN", False),  # administratively down
        (0x11043, "DORMANT", False),
        (0x11043, "LOWERLAYERDOWN", False),
    ],
)
def test_carrier(flags: int, operstate: str, up: bool) -> None:
    assert readback.carrier_up(flags, operstate) is up


# --- the registry ---------------------------------------------------------------------


def test_registry_loads_the_linux_driver_lazily() -> None:
    driver = registry.load_router_driver("linux")
    assert driver.__name__ == "LinuxRouterDriver"


def test_registry_loads_known_and_explains_unknown_drivers() -> None:
    assert registry.load_router_driver("routeros").__name__ == "RouterOSDriver"
    assert registry.load_router_driver("linux").__name__ == "LinuxRouterDriver"
    with pytest.raises(UnsupportedError, match="use one of: linux, routeros"):
        registry.load_router_driver("openwrt-uci")


# --- the split counters ---------------------------------------------------------------


def test_split_counters_mark_connections_and_count_both_ways() -> None:
    script = rules.build_nft(POLICY).script
    assert "counter voice_on_cellular {" in script and "counter agent_on_cellular {" in script
    prerouting = chain_body(script, "voip_mark_prerouting")
    assert (
        'iifname "lan0" meta mark & 0x4350 == 0x4350 ct mark set ct mark | 0x10000000'
        in prerouting
    )
    output = chain_body(script, "agent_mark_output")
    assert "ct direction original ct mark set ct mark | 0x20000000" in output
    split_in = chain_body(script, "cellular_split_prerouting")
    assert "type filter hook prerouting priority filter;" in split_in
    assert (
        'iifname "lte0" ct mark & 0x10000000 == 0x10000000 counter name voice_on_cellular'
        in split_in
    )
    assert 'iifname "lte0" ct mark & 0x20000000 == 0x20000000 counter name agent_on_cellular' in (
        split_in
    )
    split_out = chain_body(script, "cellular_split_postrouting")
    assert "type filter hook postrouting priority filter;" in split_out
    assert 'oifname "lte0" ct mark & 0x10000000 == 0x10000000 counter name voice_on_cellular' in (
        split_out
    )
    assert 'oifname "lte0" ct mark & 0x20000000 == 0x20000000 counter name agent_on_cellular' in (
        split_out
    )


@pytest.mark.parametrize(
    ("carried", "expected"),
    [
        ({}, ["packets 0 bytes 0", "packets 0 bytes 0"]),
        ({"voice_on_cellular": (4, 800)}, ["packets 4 bytes 800", "packets 0 bytes 0"]),
        (
            {"voice_on_cellular": (4, 800), "agent_on_cellular": (2, 120)},
            ["packets 4 bytes 800", "packets 2 bytes 120"],
        ),
    ],
)
def test_split_counter_history_is_carried_over(
    carried: dict[str, tuple[int, int]], expected: list[str]
) -> None:
    script = rules.build_nft(POLICY, counters=carried).script
    for name, line in zip(("voice_on_cellular", "agent_on_cellular"), expected, strict=True):
        body = re.search(rf"counter {name} {{\n(.*?)\n\t}}", script, re.S)
        assert body and line in body.group(1)


def test_listing_gives_the_split_counters_and_none_when_missing() -> None:
    plan = rules.build_nft(POLICY)
    listing = readback.parse_listing(nft_listing(plan))
    assert listing.counters == {"voice_on_cellular": (40, 8000), "agent_on_cellular": (5, 900)}
    assert listing.split_bytes(rules.VOICE_COUNTER) == 8000
    assert listing.split_bytes(rules.AGENT_COUNTER) == 900
    document = nft_listing(plan)
    document["nftables"] = [
        i for i in document["nftables"] if i.get("counter", {}).get("name") != "agent_on_cellular"
    ]
    older = readback.parse_listing(document)
    assert older.split_bytes(rules.AGENT_COUNTER) is None
    assert readback.nft_drift(plan, older) == [
        "the nftables table inet cpe_agent has no counter agent_on_cellular"
    ]
