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
    #: UDP source port of the agent's own SIP OPTIONS probes for the cellular link when
    #: the agent runs beside the router (a LAN box): the router steers datagrams from this
    #: port to the VoIP prefixes out of the cellular link at all times, so the agent can
    #: test LTE on purpose. None: no such steering (an agent on the router binds instead).
    cellular_probe_port: int | None = None
    #: UDP source port of the agent's SIP OPTIONS probes for the primary link when the agent
    #: runs beside the router: never steered to LTE, not even in failover, so the primary
    #: is judged by the primary. None: no such exception.
    primary_probe_port: int | None = None


@dataclass(frozen=True)
class RouterIdentity:
    """Who the router is, as it says itself; compared across reads (and, by the agent,
    across restarts) to tell a swap, a factory reset or a hand-made change of identity."""

    serial: str | None
    model: str | None
    #: The configured name (/system/identity on RouterOS); a factory reset restores the default.
    name: str | None
    os_version: str | None


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
    #: The router's identity, when the driver can read one (None on a Linux router).
    identity: RouterIdentity | None = None
    #: One sentence per thing worth an event that re-applying would not undo, each
    #: reported once: the driver changed configuration that is not its own (it disabled
    #: the SIP helper), the router's serial or name changed, the router rebooted.
    notices: tuple[str, ...] = ()
    #: IP bytes of VoIP, and of the agent's own traffic, that left or entered by the
    #: cellular link, both directions summed, as the router counted them since its rules
    #: were installed (a re-apply keeps them; a router reboot restarts them). None: the
    #: driver cannot tell them apart.
    voice_bytes: int | None = None
    agent_bytes: int | None = None
    #: True when a SIP ALG/helper on the router rewrites SIP (it breaks registrations and
    #: gives one-way audio, and its NAT bindings outlive a failover); False when the driver
    #: checked and it is off; None when the driver cannot tell. It is read as found: the
    #: RouterOS driver turns the helper off on apply (after that, True means someone turned
    #: it back on); the Linux driver only reports it (it is the customer's configuration).
    sip_helper_on: bool | None = None
    #: One line naming the firmware profile the driver matched, for a person (model, OS
    #: line and version, the profile files); None when the driver has no profiles.
    profile: str | None = None
    #: True: a profile for this exact model was found; False: none for this model, so the
    #: OS line's defaults are in use (worth telling the provider); None: the driver has no
    #: profiles (Linux).
    profile_matched: bool | None = None


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


# -- cellular modems ---------------------------------------------------------------------
# Every modem driver (AT, Netgear JSON, MikroTik built-in) normalises to these types at its
# boundary: dBm and dB as numbers, identifiers as strings, and None wherever the device
# said "unknown" (99, 255, -32768, "-", "--", "FFFF" ...). See docs/modems.md.


class AccessTech(enum.StrEnum):
    """The radio access technology of the serving cell."""

    GSM = "gsm"
    UMTS = "umts"
    LTE = "lte"
    LTE_CAT_M = "lte_cat_m"
    NB_IOT = "nb_iot"
    NR5G_NSA = "nr5g_nsa"  # LTE anchor + NR leg (EN-DC); the LTE figures are the anchor's
    NR5G_SA = "nr5g_sa"


class Registration(enum.StrEnum):
    """Network registration, after 3GPP TS 27.007 <stat> (+CREG/+CGREG/+CEREG/+C5GREG)."""

    HOME = "home"
    ROAMING = "roaming"
    SEARCHING = "searching"
    DENIED = "denied"
    NOT_REGISTERED = "not_registered"
    UNKNOWN = "unknown"

    @property
    def registered(self) -> bool:
        return self in (Registration.HOME, Registration.ROAMING)


class SimState(enum.StrEnum):
    READY = "ready"
    PIN_REQUIRED = "pin_required"
    PUK_REQUIRED = "puk_required"
    #: Locked by a PIN other than the SIM PIN (PH-SIM, network personalisation ...).
    LOCKED = "locked"
    ABSENT = "absent"
    #: Present but not usable yet (initialising, busy).
    NOT_READY = "not_ready"
    #: The card failed (27.007 CME 13 "SIM failure", 15 "SIM wrong").
    FAILED = "failed"


@dataclass(frozen=True)
class SignalReport:
    """One normalised look at the modem: radio, registration, cell, SIM. Unknown is None."""

    registration: Registration = Registration.UNKNOWN
    access_tech: AccessTech | None = None
    rssi_dbm: int | None = None
    rsrp_dbm: int | None = None
    rsrq_db: float | None = None
    sinr_db: float | None = None
    #: 3GPP band name: "B66" for E-UTRA, "n71" for NR.
    band: str | None = None
    #: Operator name as the network or SIM gives it ("T-Mobile"), not the PLMN code.
    operator: str | None = None
    #: Serving network's country and network codes, as strings ("310", "260"; "302", "720").
    mcc: str | None = None
    mnc: str | None = None
    #: LTE/NR tracking area code (or the GSM/UMTS location area code).
    tac: int | None = None
    #: E-UTRAN cell identity (28 bits), NR cell identity (36 bits) or UMTS/GSM cell id.
    cell_id: int | None = None
    #: eNodeB id: the E-UTRAN cell identity without its 8-bit cell part (LTE only).
    enb_id: int | None = None
    pci: int | None = None
    earfcn: int | None = None
    #: The NR leg in NR5G-NSA (EN-DC): the main figures above stay the LTE anchor's.
    nr_rsrp_dbm: int | None = None
    nr_rsrq_db: float | None = None
    nr_sinr_db: float | None = None
    nr_band: str | None = None
    sim_state: SimState | None = None
    iccid: str | None = None
    imei: str | None = None
    #: False when the radio is off (+CFUN 0 or 4): the modem answers but cannot register.
    radio_on: bool | None = None
    #: True when the device says its data session is up (Netgear, MikroTik).
    connected: bool | None = None
    #: Which driver made the report ("at/quectel", "netgear", "routeros-lte").
    source: str = ""

    @property
    def plmn(self) -> str | None:
        """MCC+MNC ("310260"), or None when either is unknown."""
        if self.mcc is None or self.mnc is None:
            return None
        return self.mcc + self.mnc


@dataclass(frozen=True)
class ModemIdentity:
    manufacturer: str | None = None
    model: str | None = None
    firmware: str | None = None
    imei: str | None = None
    iccid: str | None = None


@dataclass(frozen=True)
class ModemTime:
    """The modem's idea of the time, from the network (NITZ) or its clock (+CCLK)."""

    utc_s: float
    #: Local offset from UTC the network announced (seconds east), when known.
    tz_offset_s: int | None = None
    #: "nitz" when the network set it, "cclk" when read from the modem's clock.
    source: str = "cclk"


@dataclass(frozen=True)
class GnssFix:
    lat_deg: float
    lon_deg: float
    #: Horizontal uncertainty, when the receiver gives one (HDOP x 5 m when only HDOP is known).
    accuracy_m: float | None = None
    utc_s: float | None = None


class ModemEventKind(enum.StrEnum):
    REGISTRATION = "registration"  # +CREG/+CGREG/+CEREG/+C5GREG unsolicited
    SIM = "sim"  # SIM inserted/removed/ready
    REBOOTED = "rebooted"  # the modem announced a (re)start (Quectel "RDY")
    OTHER = "other"  # any other unsolicited line, kept verbatim


@dataclass(frozen=True)
class ModemEvent:
    kind: ModemEventKind
    registration: Registration | None = None
    sim_state: SimState | None = None
    tac: int | None = None
    cell_id: int | None = None
    #: The unsolicited line as the modem sent it.
    raw: str = ""
