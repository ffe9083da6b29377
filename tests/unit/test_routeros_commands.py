"""The RouterOS builders, from tables: what the agent owns for a policy, on v6 and v7."""

from __future__ import annotations

import dataclasses

import pytest

from drivers.errors import NeedsHumanError, UnsupportedError
from drivers.router.routeros import commands as c
from drivers.types import VoipPolicy

POLICY = VoipPolicy(
    primary_interface="ether1",
    cellular_interface="ether10",
    cellular_gateway="192.168.5.1",
    lan_interfaces=("bridge",),
    voip_prefixes=("203.0.113.10/32", "203.0.113.96/28"),
    agent_prefixes=("203.0.113.53/32",),
    cellular_probe_port=5099,
)


def by_role(items: tuple[c.Desired, ...]) -> dict[str, c.Desired]:
    return {i.role: i for i in items}


def test_v7_uses_a_fib_table_and_routing_table() -> None:
    items = by_role(c.build(POLICY, c.V7))
    assert items["table"].values == {"name": c.TABLE, "fib": "yes"}
    assert items["route"].values == {"dst-address": "0.0.0.0/0", "gateway": "192.168.5.1",
                                     "distance": "1", "routing-table": c.TABLE}


def test_v6_has_no_table_and_uses_routing_mark() -> None:
    items = by_role(c.build(POLICY, c.V6))
    assert "table" not in items
    assert items["route"].values["routing-mark"] == c.TABLE
    assert "routing-table" not in items["route"].values


@pytest.mark.parametrize("dialect", [c.V6, c.V7])
def test_every_item_is_tagged_with_letters_first(dialect: c.Dialect) -> None:
    for item in c.build(POLICY, dialect):
        assert item.tag.startswith("cpe-agent:") and item.tag[0].isalpha()
        assert "comment" not in item.values


def test_the_switch_is_one_jump_rule_added_last_in_mangle() -> None:
    items = c.build(POLICY, c.V7)
    switches = [i for i in items if i.switch]
    assert [s.role for s in switches] == [c.SWITCH_ROLE]
    assert switches[0].values == {"chain": "prerouting", "action": "jump",
                                  "jump-target": c.MARK_CHAIN}
    mangle = [i.role for i in items if i.menu == c.MANGLE]
    assert mangle[-1] == c.SWITCH_ROLE


def test_voip_marks_need_the_providers_prefix() -> None:
    marks = [i for i in c.build(POLICY, c.V7) if i.values.get("chain") == c.MARK_CHAIN]
    assert {i.role for i in marks} == {"mark-sip-udp@bridge", "mark-sip-tcp@bridge",
                                       "mark-rtp@bridge", "mark-dscp-ef@bridge",
                                       "mark-agent@bridge"}
    for mark in marks:
        v = mark.values
        assert v["in-interface"] == "bridge" and v["action"] == "mark-routing"
        assert v["new-routing-mark"] == c.TABLE
        assert v["dst-address-list"] in (c.VOIP_LIST, c.AGENT_LIST)
    rtp = by_role(c.build(POLICY, c.V7))["mark-rtp@bridge"].values
    assert (rtp["protocol"], rtp["dst-port"]) == ("udp", "10000-20000")
    assert by_role(c.build(POLICY, c.V7))["mark-dscp-ef@bridge"].values["dscp"] == "46"


def test_guard_accepts_voip_then_drops_and_sits_before_fasttrack() -> None:
    items = c.build(POLICY, c.V7)
    chain = [i.role for i in items if i.values.get("chain") == c.GUARD_CHAIN]
    assert chain[-1] == c.DROP_ROLE and len(chain) == 7
    forward = [i for i in items if i.values.get("chain") == "forward"]
    assert {i.placement for i in forward} == {c.BEFORE_FASTTRACK}
    guard = by_role(items)["guard"].values
    assert (guard["out-interface"], guard["jump-target"]) == ("ether10", c.GUARD_CHAIN)
    nat = by_role(items)["masquerade"]
    assert nat.placement == c.TOP_OF_CHAIN and nat.values["out-interface"] == "ether10"


def test_probe_steering_is_always_on_and_outside_the_switch() -> None:
    steer = by_role(c.build(POLICY, c.V7))["probe-steer@bridge"]
    assert steer.values["chain"] == "prerouting" and steer.values["src-port"] == "5099"
    assert not steer.switch
    plain = dataclasses.replace(POLICY, cellular_probe_port=None, agent_prefixes=(),
                                match_dscp_ef=False)
    roles = set(by_role(c.build(plain, c.V7)))
    assert not roles & {"probe-steer@bridge", "allow-probe", "mark-agent@bridge",
                        "allow-agent", "mark-dscp-ef@bridge", "allow-dscp-ef"}


def test_primary_probes_return_first_from_the_marking_chain() -> None:
    policy = dataclasses.replace(POLICY, primary_probe_port=5098)
    chain = [i for i in c.build(policy, c.V7) if i.values.get("chain") == c.MARK_CHAIN]
    assert chain[0].role == "probe-primary"
    assert chain[0].values == {"chain": c.MARK_CHAIN, "protocol": "udp", "src-port": "5098",
                               "action": "return"}
    with pytest.raises(NeedsHumanError, match="same port"):
        c.build(dataclasses.replace(policy, cellular_probe_port=5098), c.V7)


def test_address_lists_print_hosts_without_slash_32_and_dedupe() -> None:
    policy = dataclasses.replace(POLICY, voip_prefixes=("203.0.113.10/32", "203.0.113.10",
                                                        "203.0.113.97/28"))
    lists = [i.values for i in c.build(policy, c.V7) if i.menu == c.ADDRESS_LIST]
    assert lists == [{"list": c.VOIP_LIST, "address": "203.0.113.10"},
                     {"list": c.VOIP_LIST, "address": "203.0.113.96/28"},
                     {"list": c.AGENT_LIST, "address": "203.0.113.53"}]


def test_lte1_without_a_gateway_routes_by_interface() -> None:
    policy = dataclasses.replace(POLICY, cellular_interface="lte1", cellular_gateway=None)
    assert by_role(c.build(policy, c.V7))["route"].values["gateway"] == "lte1"


@pytest.mark.parametrize(("change", "error", "text"), [
    ({"lan_interfaces": ("lan*",)}, NeedsHumanError, "no wildcards"),
    ({"lan_interfaces": ()}, NeedsHumanError, "no LAN interface"),
    ({"lan_interfaces": ("ether10",)}, NeedsHumanError, "both the cellular and a LAN"),
    ({"voip_prefixes": ()}, NeedsHumanError, "no VoIP prefixes"),
    ({"voip_prefixes": ("sbc.example",)}, NeedsHumanError, "not an address"),
    ({"voip_prefixes": ("2001:db8::/32",)}, UnsupportedError, "IPv6"),
    ({"sip_ports": (0,)}, NeedsHumanError, "not a port number"),
    ({"rtp_port_min": 30000}, NeedsHumanError, "swap them"),
    ({"cellular_gateway": "modem"}, NeedsHumanError, "not an IPv4 address"),
    ({"cellular_probe_port": 70000}, NeedsHumanError, "cellular_probe_port"),
])
def test_bad_policies_are_refused_in_one_sentence(change: dict[str, object],
                                                   error: type[Exception], text: str) -> None:
    with pytest.raises(error, match=text):
        c.build(dataclasses.replace(POLICY, **change), c.V7)  # type: ignore[arg-type]


def test_role_of_reads_only_the_agents_tag() -> None:
    assert c.role_of("cpe-agent:switch") == "switch"
    assert c.role_of("defconf: fasttrack") is None
    assert c.role_of(None) is None
    assert c.role_of("cpe-agentX") is None


def test_the_registry_loads_the_routeros_driver() -> None:
    from drivers import registry
    from drivers.router.base import RouterDriver

    driver_class = registry.load_router_driver("routeros")
    assert driver_class.__name__ == "RouterOSDriver"
    # Built from the agent's settings section (app.build_router), with no I/O yet.
    made = driver_class(host="192.0.2.1", port=None, username="agent", password=None,
                        plain_api=False, tls_ca_file=None, tls_verify=True, timeout_s=10.0)
    assert isinstance(made, RouterDriver)
