"""The virtual lab's fixed topology: node names, interfaces, addresses and routes.

Other parts of the project (tests, the demo, benchmarks) code against these names, so
they are constants. Only the namespace prefix varies (`cpl-` by default; tests use a
prefix of their own so they never disturb a running demo lab).

```
 phone eth0 ─┐                                                    ┌ dc0  ── up0 sbc
 pc    eth0 ─┴ lan0 (bridge) cpe wan0 ── cpe0 isp up0 ── isp0 inet ┤
                                 lte0 ── cpe0 lte up0 ── lte0      └ web0 ── up0 web
```

Every address is in a documentation or shared range (192.0.2.0/24, 198.51.100.0/24,
203.0.113.0/24, 100.64.0.0/10): nothing here can reach or be mistaken for the internet.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path

DEFAULT_PREFIX = "cpl-"
PREFIX_ENV = "CPE_LAB_PREFIX"
#: Letters, digits and '-', ending in '-', short enough that every namespace name stays
#: readable; the namespace names themselves have no 15-character limit.
PREFIX_PATTERN = re.compile(r"^[a-z][a-z0-9-]{0,22}-$")

#: The default lab's directory: the agent's config, daemon pids and logs live here.
DEFAULT_LAB_DIR = Path("/run/cpe-lab")
CONFIG_FILE_NAME = "agent.toml"

ALLOWED_NETWORKS = tuple(
    ipaddress.ip_network(net)
    for net in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "100.64.0.0/10")
)

# --- nodes (namespace name = prefix + node) -------------------------------------------
PHONE = "phone"
PC = "pc"
CPE = "cpe"
ISP = "isp"
LTE = "lte"
INET = "inet"
SBC = "sbc"
WEB = "web"
NODES = (PHONE, PC, CPE, ISP, LTE, INET, SBC, WEB)
ROUTERS = (CPE, ISP, LTE, INET)

# --- the LAN ---------------------------------------------------------------------------
LAN_BRIDGE = "lan0"
LAN_GATEWAY = "100.64.1.1"
LAN_NETWORK = "100.64.1.0/24"
PHONE_IF = "eth0"
PHONE_ADDRESS = "100.64.1.10"
PC_IF = "eth0"
PC_ADDRESS = "100.64.1.20"
CPE_PHONE_PORT = "veth-phone"
CPE_PC_PORT = "veth-pc"

# --- the CPE's uplinks -----------------------------------------------------------------
PRIMARY_IF = "wan0"
PRIMARY_ADDRESS = "198.51.100.2"
PRIMARY_GATEWAY = "198.51.100.1"
CELLULAR_IF = "lte0"
CELLULAR_ADDRESS = "100.64.100.2"
CELLULAR_GATEWAY = "100.64.100.1"
#: The customer's own NAT on the CPE (masquerade out wan0). The agent never touches it.
CUSTOMER_NAT_TABLE = "customer_nat"

# --- the ISP and the LTE carrier ---------------------------------------------------------
ISP_CPE_IF = "cpe0"
ISP_UP_IF = "up0"
ISP_UP_ADDRESS = "192.0.2.2"
LTE_CPE_IF = "cpe0"
LTE_UP_IF = "up0"
LTE_UP_ADDRESS = "192.0.2.6"
CGNAT_NETWORK = "100.64.0.0/10"
CARRIER_NAT_TABLE = "carrier_nat"

# --- the internet core -----------------------------------------------------------------
INET_ISP_IF = "isp0"
INET_ISP_ADDRESS = "192.0.2.1"
INET_LTE_IF = "lte0"
INET_LTE_ADDRESS = "192.0.2.5"
INET_DC_IF = "dc0"
INET_DC_ADDRESS = "203.0.113.1"
INET_WEB_IF = "web0"
INET_WEB_ADDRESS = "203.0.113.65"

# --- the provider's data centres ---------------------------------------------------------
SBC_UP_IF = "up0"
SBC_UP_ADDRESS = "203.0.113.2"
SBC_EAST = "203.0.113.10"
SBC_WEST = "203.0.113.11"
SBC_CENTRAL = "203.0.113.12"
SBC_ADDRESSES = {"sbc-east": SBC_EAST, "sbc-west": SBC_WEST, "sbc-central": SBC_CENTRAL}
MQTT_ADDRESS = "203.0.113.30"
MQTT_PORT = 1883
SIP_PORT = 5060
RTP_PORT = 16384
#: UDP echo (RFC 862) on every SBC address: the installer's test measures voice with it.
ECHO_PORT = 7
#: The simulated modem's side channel (JSON lines), on loopback inside the CPE namespace.
MODEM_CONTROL_PORT = 7581
#: The lab's modem starts with good coverage (grade "good"); tests change it.
MODEM_SIGNAL = {"rsrp_dbm": -85, "rsrq_db": -9, "sinr_db": 16, "rssi_dbm": -60}

# --- a web host on the internet ----------------------------------------------------------
WEB_UP_IF = "up0"
WEB_ADDRESS = "203.0.113.80"
WEB_PORT = 80

#: What the SBC sees as the source of the site's traffic on each path.
PRIMARY_PUBLIC_ADDRESS = PRIMARY_ADDRESS
CELLULAR_PUBLIC_ADDRESS = LTE_UP_ADDRESS


@dataclass(frozen=True)
class Veth:
    """A veth pair: one end in each namespace, created there directly (no host names)."""

    node_a: str
    if_a: str
    node_b: str
    if_b: str


@dataclass(frozen=True)
class Address:
    node: str
    ifname: str
    cidr: str


@dataclass(frozen=True)
class Route:
    node: str
    destination: str  # "default" or a CIDR
    via: str


VETHS = (
    Veth(PHONE, PHONE_IF, CPE, CPE_PHONE_PORT),
    Veth(PC, PC_IF, CPE, CPE_PC_PORT),
    Veth(CPE, PRIMARY_IF, ISP, ISP_CPE_IF),
    Veth(CPE, CELLULAR_IF, LTE, LTE_CPE_IF),
    Veth(ISP, ISP_UP_IF, INET, INET_ISP_IF),
    Veth(LTE, LTE_UP_IF, INET, INET_LTE_IF),
    Veth(SBC, SBC_UP_IF, INET, INET_DC_IF),
    Veth(WEB, WEB_UP_IF, INET, INET_WEB_IF),
)

#: Bridge ports on the CPE: their IP lives on the bridge.
LAN_PORTS = (CPE_PHONE_PORT, CPE_PC_PORT)

ADDRESSES = (
    Address(PHONE, PHONE_IF, f"{PHONE_ADDRESS}/24"),
    Address(PC, PC_IF, f"{PC_ADDRESS}/24"),
    Address(CPE, LAN_BRIDGE, f"{LAN_GATEWAY}/24"),
    Address(CPE, PRIMARY_IF, f"{PRIMARY_ADDRESS}/30"),
    Address(CPE, CELLULAR_IF, f"{CELLULAR_ADDRESS}/24"),
    Address(ISP, ISP_CPE_IF, f"{PRIMARY_GATEWAY}/30"),
    Address(ISP, ISP_UP_IF, f"{ISP_UP_ADDRESS}/30"),
    Address(LTE, LTE_CPE_IF, f"{CELLULAR_GATEWAY}/24"),
    Address(LTE, LTE_UP_IF, f"{LTE_UP_ADDRESS}/30"),
    Address(INET, INET_ISP_IF, f"{INET_ISP_ADDRESS}/30"),
    Address(INET, INET_LTE_IF, f"{INET_LTE_ADDRESS}/30"),
    Address(INET, INET_DC_IF, f"{INET_DC_ADDRESS}/26"),
    Address(INET, INET_WEB_IF, f"{INET_WEB_ADDRESS}/26"),
    Address(SBC, SBC_UP_IF, f"{SBC_UP_ADDRESS}/26"),
    *(Address(SBC, SBC_UP_IF, f"{a}/32") for a in (*SBC_ADDRESSES.values(), MQTT_ADDRESS)),
    Address(WEB, WEB_UP_IF, f"{WEB_ADDRESS}/26"),
)

ROUTES = (
    Route(PHONE, "default", LAN_GATEWAY),
    Route(PC, "default", LAN_GATEWAY),
    # The CPE's only default route is the primary; the agent adds its own table for LTE.
    Route(CPE, "default", PRIMARY_GATEWAY),
    Route(ISP, "default", INET_ISP_ADDRESS),
    Route(LTE, "default", INET_LTE_ADDRESS),
    Route(INET, "198.51.100.0/30", ISP_UP_ADDRESS),
    Route(SBC, "default", INET_DC_ADDRESS),
    Route(WEB, "default", INET_WEB_ADDRESS),
)

#: Per-node sysctls. IPv6 is off everywhere: the lab is IPv4, and router solicitations
#: would otherwise add bytes to the counters the meter reads.
COMMON_SYSCTLS = (
    ("net.ipv6.conf.all.disable_ipv6", "1"),
    ("net.ipv6.conf.default.disable_ipv6", "1"),
)
ROUTER_SYSCTLS = (("net.ipv4.ip_forward", "1"),)
#: The CPE behaves like a Debian router: loose reverse-path filtering (systemd's default).
CPE_SYSCTLS = (
    ("net.ipv4.conf.all.rp_filter", "2"),
    ("net.ipv4.conf.default.rp_filter", "2"),
)
#: Set after the CPE's nftables NAT has loaded conntrack (the key exists only then).
CPE_CONNTRACK_SYSCTLS = (("net.netfilter.nf_conntrack_acct", "1"),)

#: The uplink each impairable link is cut on, seen from the provider side, so nothing
#: the lab does to a link is visible inside the CPE's namespace except its effects.
LINK_SIDES = {
    "primary": (ISP, ISP_CPE_IF, ISP_UP_IF),
    "cellular": (LTE, LTE_CPE_IF, LTE_UP_IF),
}
LINK_NAMES = tuple(LINK_SIDES)


def resolve_prefix(prefix: str | None = None) -> str:
    """The prefix to use: the argument, else $CPE_LAB_PREFIX, else `cpl-`; validated."""
    chosen = prefix or os.environ.get(PREFIX_ENV) or DEFAULT_PREFIX
    if not PREFIX_PATTERN.match(chosen):
        raise ValueError(
            f"lab prefix {chosen!r} is not valid: use lower-case letters, digits and '-', "
            "starting with a letter and ending with '-' (e.g. 'cpt1234-')"
        )
    return chosen


def default_lab_dir(prefix: str) -> Path:
    """`/run/cpe-lab` for the default prefix; `/run/cpe-lab-<prefix>` for any other."""
    if prefix == DEFAULT_PREFIX:
        return DEFAULT_LAB_DIR
    return DEFAULT_LAB_DIR.with_name(f"cpe-lab-{prefix.rstrip('-')}")


def namespace(prefix: str, node: str) -> str:
    if node not in NODES:
        raise ValueError(f"unknown lab node {node!r}; the nodes are {', '.join(NODES)}")
    return f"{prefix}{node}"


def is_allowed_address(address: str) -> bool:
    """True when the address (or network) lies inside the lab's permitted ranges."""
    net = ipaddress.ip_network(address, strict=False)
    return any(net.subnet_of(allowed) for allowed in ALLOWED_NETWORKS)  # type: ignore[arg-type]
