"""Pure builders: the commands that build the lab and apply impairments.

Nothing here runs anything; `hil.lab.lab.Lab` executes the returned `Step`s. Keeping
the command text pure lets the unprivileged tests check it (address ranges, interface
name lengths, nft syntax shapes) without root.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from hil.lab import topology as t

#: nft tables the lab adds in the ISP / carrier / internet namespaces for impairments.
BLACKHOLE_TABLE = "lab_blackhole"
LOSS_TABLE = "lab_loss"
TARGET_TABLE = "lab_target"
TARGET_SET = "dead"

LINK_KINDS = ("blackhole", "loss", "down", "up", "rate", "delay", "clear")
TARGET_KINDS = ("dead", "alive", "clear")


class PlanError(ValueError):
    """An impairment or topology request that cannot be built (one sentence, with a fix)."""


@dataclass(frozen=True)
class Step:
    """One command. `node` None runs on the host (only `ip netns` / `ip link add ... netns`
    batches, which never create anything in the host's own namespace)."""

    node: str | None
    argv: tuple[str, ...]
    stdin: str | None = None
    #: Failure is expected sometimes (deleting what may not exist) and is not an error.
    may_fail: bool = False
    why: str = field(default="", compare=False)


def _ip_batch(node: str | None, lines: list[str], why: str) -> Step:
    return Step(node, ("ip", "-batch", "-"), "\n".join(lines) + "\n", why=why)


def _sysctl(node: str, pairs: tuple[tuple[str, str], ...], why: str) -> Step:
    return Step(node, ("sysctl", "-q", "-w", *(f"{k}={v}" for k, v in pairs)), why=why)


def _nft(node: str, script: str, why: str, may_fail: bool = False) -> Step:
    return Step(node, ("nft", "-f", "-"), script, may_fail=may_fail, why=why)


# --- building ------------------------------------------------------------------------


def build_steps(prefix: str) -> list[Step]:
    """Every command that builds the topology, in order (namespaces must not exist yet)."""
    steps = [
        _ip_batch(None, [f"netns add {t.namespace(prefix, n)}" for n in t.NODES], "namespaces")
    ]
    for node in t.NODES:
        pairs: tuple[tuple[str, str], ...] = t.COMMON_SYSCTLS
        if node in t.ROUTERS:
            pairs = pairs + t.ROUTER_SYSCTLS
        if node == t.CPE:
            pairs = pairs + t.CPE_SYSCTLS
        steps.append(_sysctl(node, pairs, f"sysctls of {node}"))
    steps.append(
        _ip_batch(
            None,
            [
                f"link add {v.if_a} netns {t.namespace(prefix, v.node_a)} type veth "
                f"peer name {v.if_b} netns {t.namespace(prefix, v.node_b)}"
                for v in t.VETHS
            ],
            "veth pairs, created directly inside the namespaces",
        )
    )
    for node in t.NODES:
        steps.append(_ip_batch(node, _node_lines(node), f"addresses and routes of {node}"))
    steps.append(_nft(t.CPE, customer_nat_script(), "the customer's own NAT on the CPE"))
    steps.append(_sysctl(t.CPE, t.CPE_CONNTRACK_SYSCTLS, "conntrack byte accounting"))
    steps.append(_nft(t.LTE, carrier_nat_script(), "the carrier's CGNAT"))
    steps.append(_nft(t.INET, target_table_script(), "the dead-target filter (empty)"))
    return steps


def _node_lines(node: str) -> list[str]:
    lines = ["link set lo up"]
    if node == t.CPE:
        lines.append(f"link add {t.LAN_BRIDGE} type bridge stp_state 0 forward_delay 0")
        for port in t.LAN_PORTS:
            lines.append(f"link set {port} master {t.LAN_BRIDGE}")
    ifnames: list[str] = []
    for veth in t.VETHS:
        for owner, ifname in ((veth.node_a, veth.if_a), (veth.node_b, veth.if_b)):
            if owner == node and ifname not in ifnames:
                ifnames.append(ifname)
    if node == t.CPE:
        ifnames.append(t.LAN_BRIDGE)
    for address in t.ADDRESSES:
        if address.node == node:
            lines.append(f"addr add {address.cidr} dev {address.ifname}")
    for ifname in ifnames:
        lines.append(f"link set {ifname} up")
    for route in t.ROUTES:
        if route.node == node:
            lines.append(f"route add {route.destination} via {route.via}")
    return lines


def customer_nat_script() -> str:
    return (
        f"table ip {t.CUSTOMER_NAT_TABLE} {{\n"
        "  chain postrouting {\n"
        "    type nat hook postrouting priority srcnat; policy accept;\n"
        f'    oifname "{t.PRIMARY_IF}" masquerade\n'
        "  }\n"
        "}\n"
    )


def carrier_nat_script() -> str:
    return (
        f"table ip {t.CARRIER_NAT_TABLE} {{\n"
        "  chain postrouting {\n"
        "    type nat hook postrouting priority srcnat; policy accept;\n"
        f'    ip saddr {t.CGNAT_NETWORK} oifname "{t.LTE_UP_IF}" masquerade\n'
        "  }\n"
        "}\n"
    )


def target_table_script() -> str:
    return (
        f"table ip {TARGET_TABLE} {{\n"
        f"  set {TARGET_SET} {{ type ipv4_addr; }}\n"
        "  chain forward {\n"
        "    type filter hook forward priority filter - 10; policy accept;\n"
        f"    ip daddr @{TARGET_SET} drop\n"
        f"    ip saddr @{TARGET_SET} drop\n"
        "  }\n"
        "}\n"
    )


def teardown_steps(prefix: str, existing: list[str]) -> list[Step]:
    """Delete the lab's namespaces that exist (their veths go with them)."""
    ours = [t.namespace(prefix, n) for n in t.NODES]
    doomed = [ns for ns in ours if ns in existing]
    if not doomed:
        return []
    return [
        Step(None, ("ip", "-force", "-batch", "-"), "".join(f"netns del {ns}\n" for ns in doomed))
    ]


# --- impairments -----------------------------------------------------------------------


def _replace_table(table: str, body: str) -> str:
    """nft 1.0.6 has no `destroy`: add-then-delete makes the replacement idempotent."""
    return f"add table ip {table}\ndelete table ip {table}\ntable ip {table} {{\n{body}}}\n"


def _drop_table(table: str) -> str:
    return f"add table ip {table}\ndelete table ip {table}\n"


def link_impairment_steps(link: str, kind: str, value: float | None = None) -> list[Step]:
    """Commands for `impair primary|cellular KIND [VALUE]`, applied on the provider side."""
    if link not in t.LINK_SIDES:
        raise PlanError(f"unknown link {link!r}; use one of {', '.join(t.LINK_NAMES)} or 'target'")
    node, cpe_side, up_side = t.LINK_SIDES[link]
    if kind == "blackhole":
        # Only forwarded traffic: the gateway still answers ARP and ping, as in a real
        # upstream outage (which is why gateway checks miss it).
        body = (
            "  chain forward {\n"
            "    type filter hook forward priority filter - 10; policy accept;\n"
            f'    iifname "{cpe_side}" drop\n'
            f'    oifname "{cpe_side}" drop\n'
            "  }\n"
        )
        return [_nft(node, _replace_table(BLACKHOLE_TABLE, body), f"blackhole {link}")]
    if kind == "loss":
        per_mille = _loss_per_mille(value)
        # numgen's value is 0..999: 100 % is a plain drop, 0 % no rule at all.
        if per_mille >= 1000:
            rule = "drop"
        elif per_mille > 0:
            rule = f"numgen random mod 1000 < {per_mille} drop"
        else:
            rule = "accept"
        body = (
            "  chain forward {\n"
            "    type filter hook forward priority filter - 10; policy accept;\n"
            f'    iifname "{cpe_side}" {rule}\n'
            f'    oifname "{cpe_side}" {rule}\n'
            "  }\n"
            "  chain input {\n"
            "    type filter hook input priority filter - 10; policy accept;\n"
            f'    iifname "{cpe_side}" {rule}\n'
            "  }\n"
            "  chain output {\n"
            "    type filter hook output priority filter - 10; policy accept;\n"
            f'    oifname "{cpe_side}" {rule}\n'
            "  }\n"
        )
        return [_nft(node, _replace_table(LOSS_TABLE, body), f"{value}% loss on {link}")]
    if kind == "down":
        return [_ip_batch(node, [f"link set {cpe_side} down"], f"{link} carrier off")]
    if kind == "up":
        return [_ip_batch(node, [f"link set {cpe_side} up"], f"{link} carrier on")]
    if kind == "rate":
        kbit = _positive(value, "rate needs a value in kbit/s, e.g. 'rate 256'")
        return [_tc(node, ifname, tbf_args(kbit), f"{link} limited to {kbit:g} kbit/s")
                for ifname in (cpe_side, up_side)]
    if kind == "delay":
        ms = _positive(value, "delay needs a value in milliseconds, e.g. 'delay 80'")
        return [_tc(node, ifname, ("netem", "delay", f"{ms:g}ms"), f"{link} delayed {ms:g} ms")
                for ifname in (cpe_side, up_side)]
    if kind == "clear":
        steps = [
            _nft(node, _drop_table(BLACKHOLE_TABLE) + _drop_table(LOSS_TABLE), f"clear {link}"),
            _ip_batch(node, [f"link set {cpe_side} up"], f"{link} carrier on"),
        ]
        steps += [
            Step(node, ("tc", "qdisc", "del", "dev", ifname, "root"), may_fail=True,
                 why=f"remove shaping on {ifname}")
            for ifname in (cpe_side, up_side)
        ]
        return steps
    raise PlanError(f"unknown impairment {kind!r} for {link}; use one of {', '.join(LINK_KINDS)}")


def target_impairment_steps(kind: str, address: str | None = None) -> list[Step]:
    """Commands for `impair target ADDRESS dead|alive` (or `impair target clear`)."""
    if kind == "clear":
        return [_nft(t.INET, f"flush set ip {TARGET_TABLE} {TARGET_SET}\n", "all targets alive")]
    if kind not in TARGET_KINDS:
        raise PlanError(f"unknown target state {kind!r}; use dead, alive or clear")
    if address is None:
        raise PlanError(f"'{kind}' needs the target's address, e.g. 'target {t.SBC_EAST} {kind}'")
    try:
        addr = ipaddress.IPv4Address(address)
    except ValueError as exc:
        raise PlanError(f"{address!r} is not an IPv4 address") from exc
    if not t.is_allowed_address(str(addr)):
        raise PlanError(f"{addr} is outside the lab's address ranges")
    element = f"ip {TARGET_TABLE} {TARGET_SET} {{ {addr} }}"
    script = f"add element {element}\n"
    if kind == "alive":
        script += f"delete element {element}\n"  # added first, so deleting never fails
    return [_nft(t.INET, script, f"target {addr} {kind}")]


def tbf_args(kbit: float) -> tuple[str, ...]:
    """A token bucket at `kbit`: burst of 20 ms of traffic (at least two full frames)."""
    burst_bytes = max(3200, int(kbit * 1000 / 8 * 0.02))
    return ("tbf", "rate", f"{kbit:g}kbit", "burst", str(burst_bytes), "latency", "100ms")


def _tc(node: str, ifname: str, qdisc: tuple[str, ...], why: str) -> Step:
    return Step(node, ("tc", "qdisc", "replace", "dev", ifname, "root", *qdisc), why=why)


def _loss_per_mille(value: float | None) -> int:
    if value is None or not 0 <= value <= 100:
        raise PlanError("loss needs a percentage from 0 to 100, e.g. 'loss 20'")
    return round(value * 10)


def _positive(value: float | None, message: str) -> float:
    if value is None or value <= 0:
        raise PlanError(message)
    return float(value)
