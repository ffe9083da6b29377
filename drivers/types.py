"""Frozen value types that cross the driver boundary.

Units live in the names (`rx_bytes`, `rtt_s`). Unknown is `None`, never 0.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

#: Every nftables table, routing rule, route and comment the agent installs carries this
#: tag, so that an engineer (and `cpe-agent remove`) can tell the agent's config from the
#: customer's at a glance.
AGENT_TAG = "cpe-agent"


class VoipPath(enum.StrEnum):
    """Which link VoIP leaves by."""

    PRIMARY = "primary"
    CELLULAR = "cellular"


@dataclass(frozen=True)
class VoipPolicy:
    """Everything a router needs to steer VoIP, and only VoIP, to the cellular link.

    A packet is VoIP when its destination is one of the provider's prefixes (SBCs and
    media servers) *and* it is SIP (UDP/TCP `sip_ports`), RTP (UDP in the RTP range) or
    marked DSCP EF. Requiring the provider's prefix keeps a stray UDP flow in the RTP
    range from costing plan bytes: the terms allow only VoIP on the LTE circuit.
    """

    primary_interface: str
    cellular_interface: str
    #: Next hop on the cellular link; None when the link is point-to-point.
    cellular_gateway: str | None
    lan_interfaces: tuple[str, ...]
    voip_prefixes: tuple[str, ...]
    sip_ports: tuple[int, ...] = (5060, 5061)
    rtp_port_min: int = 10000
    rtp_port_max: int = 20000
    match_dscp_ef: bool = True
    #: Destinations of the agent's own traffic (MQTT broker) that follow VoIP to LTE.
    agent_prefixes: tuple[str, ...] = ()
    cellular_table_id: int = 4241
    #: Firewall mark for VoIP (and agent) packets; selects the cellular table in failover.
    voip_mark: int = 0x4350
    #: Priority of the policy-routing rules the agent installs.
    rule_priority: int = 4241


@dataclass(frozen=True)
class RouterState:
    """What the router holds, read back from the router itself (not from our memory)."""

    policy_installed: bool
    voip_path: VoipPath | None
    #: One sentence per item that differs from the intended policy (empty when in sync).
    drift: tuple[str, ...] = ()
    #: Non-VoIP packets/bytes that tried to leave by the cellular link and were dropped.
    blocked_packets: int = 0
    blocked_bytes: int = 0


@dataclass(frozen=True)
class Counters:
    """Interface counters as the device reports them.

    `boot_id` changes when the device reboots (its counters restart from zero), so a
    meter can tell a reset from traffic. `counts_frames` is True when the counters
    include the Ethernet header (the meter subtracts it per packet).
    """

    interface: str
    rx_bytes: int
    tx_bytes: int
    rx_packets: int
    tx_packets: int
    boot_id: str
    counts_frames: bool = False
    #: Counter width in bits (64 on Linux; some devices wrap at 32).
    width_bits: int = 64


@dataclass(frozen=True)
class LinkStatus:
    interface: str
    carrier_up: bool
    #: IPv4 addresses in CIDR form, e.g. "198.51.100.2/30".
    addresses: tuple[str, ...] = ()


@dataclass(frozen=True)
class LinkEvent:
    """A carrier change reported by the device (netlink RTM_NEWLINK on Linux)."""

    interface: str
    carrier_up: bool


@dataclass(frozen=True)
class ProbeResult:
    """One probe to one target over one link."""

    target: str
    method: str  # "icmp" or "sip"
    answered: bool
    rtt_s: float | None = None
    #: Why it failed, when it did ("timeout", "unreachable", "SIP 503", ...).
    detail: str | None = None
    #: SIP status code when the method is "sip" and a reply came.
    sip_status: int | None = None
    extra: dict[str, str] = field(default_factory=dict)
