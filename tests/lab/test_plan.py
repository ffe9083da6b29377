"""The lab's pure parts (topology, command plans, the agent's config) without root."""

from __future__ import annotations

import ipaddress
import tomllib
from pathlib import Path

import pytest

from agent.config import load_settings
from hil.lab import plan
from hil.lab import topology as t
from hil.lab.agent_config import render_agent_config


def test_every_address_is_in_the_permitted_ranges() -> None:
    for address in t.ADDRESSES:
        assert t.is_allowed_address(address.cidr), address
    for route in t.ROUTES:
        assert t.is_allowed_address(route.via), route
        if route.destination != "default":
            assert t.is_allowed_address(route.destination), route
    for value in (*t.SBC_ADDRESSES.values(), t.MQTT_ADDRESS, t.WEB_ADDRESS):
        assert t.is_allowed_address(value)
    assert not t.is_allowed_address("8.8.8.8")
    assert not t.is_allowed_address("10.0.0.0/8")


def test_interface_names_fit_the_kernel_limit_and_are_unique_per_node() -> None:
    seen: set[tuple[str, str]] = set()
    for veth in t.VETHS:
        for node, ifname in ((veth.node_a, veth.if_a), (veth.node_b, veth.if_b)):
            assert len(ifname) <= 15
            assert (node, ifname) not in seen
            seen.add((node, ifname))
    for address in t.ADDRESSES:
        assert (address.node, address.ifname) in seen or address.ifname == t.LAN_BRIDGE


def test_gateways_are_on_a_connected_network() -> None:
    for route in t.ROUTES:
        nets = [ipaddress.ip_interface(a.cidr).network for a in t.ADDRESSES
                if a.node == route.node]
        assert any(ipaddress.ip_address(route.via) in net for net in nets), route


@pytest.mark.parametrize("prefix", ["cpl-", "cpt12345-", "cpt12345d-", "lab-a-"])
def test_good_prefixes(prefix: str) -> None:
    assert t.resolve_prefix(prefix) == prefix


@pytest.mark.parametrize("prefix", ["CPL-", "cpl", "-x-", "1ab-", "a" * 30 + "-", "a b-"])
def test_bad_prefixes_say_how(prefix: str) -> None:
    with pytest.raises(ValueError, match="ending with '-'"):
        t.resolve_prefix(prefix)


def test_prefix_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(t.PREFIX_ENV, "cpz-")
    assert t.resolve_prefix() == "cpz-"
    assert t.resolve_prefix("cpy-") == "cpy-"


def test_lab_directories() -> None:
    assert t.default_lab_dir("cpl-") == Path("/run/cpe-lab")
    assert t.default_lab_dir("cpt9-") == Path("/run/cpe-lab-cpt9")


def test_build_creates_nothing_in_the_host_namespace() -> None:
    steps = plan.build_steps("cpq-")
    host_lines = [line for s in steps if s.node is None for line in (s.stdin or "").splitlines()]
    assert host_lines[: len(t.NODES)] == [f"netns add cpq-{n}" for n in t.NODES]
    for line in host_lines[len(t.NODES):]:
        assert line.startswith("link add ") and line.count(" netns cpq-") == 2, line


def test_the_cpe_is_a_router_with_conntrack_accounting_and_the_customer_nat() -> None:
    steps = plan.build_steps("cpq-")
    cpe_args = [arg for s in steps if s.node == t.CPE for arg in s.argv]
    assert "net.ipv4.ip_forward=1" in cpe_args
    assert "net.netfilter.nf_conntrack_acct=1" in cpe_args
    nat = plan.customer_nat_script()
    assert f"table ip {t.CUSTOMER_NAT_TABLE}" in nat and 'oifname "wan0" masquerade' in nat


@pytest.mark.parametrize(
    ("pct", "rule"),
    [(0, 'iifname "cpe0" accept'), (20, "numgen random mod 1000 < 200 drop"),
     (0.5, "numgen random mod 1000 < 5 drop"), (100, 'iifname "cpe0" drop')],
)
def test_loss_rules(pct: float, rule: str) -> None:
    (step,) = plan.link_impairment_steps("primary", "loss", pct)
    assert step.node == t.ISP and rule in (step.stdin or "")


@pytest.mark.parametrize(
    ("link", "kind", "value", "message"),
    [
        ("primary", "loss", None, "percentage"),
        ("primary", "loss", 101, "percentage"),
        ("cellular", "rate", 0, "kbit"),
        ("cellular", "delay", None, "milliseconds"),
        ("primary", "melt", None, "unknown impairment"),
        ("wifi", "down", None, "unknown link"),
    ],
)
def test_bad_link_impairments(link: str, kind: str, value: float | None, message: str) -> None:
    with pytest.raises(plan.PlanError, match=message):
        plan.link_impairment_steps(link, kind, value)


def test_impairments_act_on_the_provider_side_only() -> None:
    for link, (node, _, _) in t.LINK_SIDES.items():
        for kind, value in (("blackhole", None), ("loss", 5), ("down", None), ("up", None),
                            ("rate", 128), ("delay", 40), ("clear", None)):
            for step in plan.link_impairment_steps(link, kind, value):
                assert step.node == node != t.CPE, (link, kind)


def test_rate_shapes_both_directions_with_tbf() -> None:
    steps = plan.link_impairment_steps("cellular", "rate", 256)
    assert [s.argv[4] for s in steps] == ["cpe0", "up0"]
    assert all(s.argv[6:9] == ("tbf", "rate", "256kbit") for s in steps)


@pytest.mark.parametrize(
    ("kind", "address", "message"),
    [("dead", None, "needs the target"), ("dead", "not-an-ip", "not an IPv4"),
     ("dead", "8.8.8.8", "outside the lab"), ("zombie", t.SBC_EAST, "dead, alive or clear")],
)
def test_bad_target_impairments(kind: str, address: str | None, message: str) -> None:
    with pytest.raises(plan.PlanError, match=message):
        plan.target_impairment_steps(kind, address)


def test_target_alive_is_idempotent() -> None:
    (step,) = plan.target_impairment_steps("alive", t.SBC_WEST)
    assert step.node == t.INET
    assert (step.stdin or "").splitlines() == [
        f"add element ip lab_target dead {{ {t.SBC_WEST} }}",
        f"delete element ip lab_target dead {{ {t.SBC_WEST} }}",
    ]


def test_agent_config_has_the_agreed_shape(tmp_path: Path) -> None:
    data = tomllib.loads(render_agent_config(Path("/run/cpe-lab")))
    assert data["agent"] == {"device_id": "lab-site-1", "state_dir": "/run/cpe-lab/state",
                             "runtime_dir": "/run/cpe-lab/runtime"}
    assert data["router"] == {"driver": "linux"}
    assert data["links"] == {"primary": {"interface": "wan0"},
                             "cellular": {"interface": "lte0", "gateway": "100.64.100.1"}}
    assert data["voip"] == {
        "lan_interfaces": ["lan0"],
        "sbc_addresses": ["203.0.113.10", "203.0.113.11", "203.0.113.12"],
        "sip_ports": [5060, 5061], "rtp_port_min": 10000, "rtp_port_max": 20000,
    }
    assert data["health"] == {"primary_interval_s": 0.2, "down_after_s": 0.8}
    assert data["failover"] == {"dwell_s": 10}
    assert data["mqtt"] == {"host": "203.0.113.30", "port": 1883, "tls": False}


def test_agent_config_is_accepted_by_the_agent(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(render_agent_config(tmp_path))
    settings = load_settings(path)
    assert settings.links.cellular.interface == "lte0"
    assert [str(a) for a in settings.voip.sbc_addresses] == list(t.SBC_ADDRESSES.values())
