"""Configuration: a TOML file, `CPE_AGENT_*` environment overrides and secret files.

The only module that imports pydantic-settings. `load_settings(path)` returns a
validated `Settings` or raises `ConfigError` carrying one sentence per problem
(file, key, what is wrong), which the CLI prints before exiting with code 2.

Precedence, highest first: environment (`CPE_AGENT_MQTT__HOST=...`, `__` between
section and key), then the TOML file, then defaults. Secrets (router and MQTT
passwords) may be given as `*_file` keys pointing to a file, so they stay out of the
config file and out of `ps`; systemd's `LoadCredential=` directory works the same way.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
import zoneinfo
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

DEFAULT_CONFIG_PATH = Path("/etc/cpe-agent/agent.toml")
ENV_PREFIX = "CPE_AGENT_"

DEVICE_ID_PATTERN = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


class ConfigError(Exception):
    """The configuration cannot be used. `problems` holds one sentence each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AgentSection(_Section):
    #: The site's id on MQTT topics: lower-case letters, digits and '-'.
    device_id: str
    #: Persistent state (SQLite: mode, meter, outbox). On flash: written sparingly.
    state_dir: Path = Path("/var/lib/cpe-agent")
    #: Volatile status for `cpe-agent status` (tmpfs: written every second).
    runtime_dir: Path = Path("/run/cpe-agent")
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @field_validator("device_id")
    @classmethod
    def _device_id(cls, value: str) -> str:
        if not DEVICE_ID_PATTERN.match(value):
            raise ValueError("must be 1-63 of a-z, 0-9 and '-', starting with a letter or digit")
        return value


class RouterSection(_Section):
    driver: Literal["linux", "routeros"] = "linux"
    host: str | None = None
    #: RouterOS api-ssl is 8729; plain 8728 only with `plain_api = true`.
    port: int | None = Field(default=None, ge=1, le=65535)
    username: str | None = None
    password: SecretStr | None = None
    password_file: Path | None = None
    plain_api: bool = False
    tls_ca_file: Path | None = None
    tls_verify: bool = True
    timeout_s: float = Field(default=10.0, gt=0)
    #: RouterOS only: the agent's SIP probes leave from these source ports, and the
    #: router steers each port to its link (so LTE can be probed on purpose, and the
    #: primary's probes never ride LTE in failover).
    primary_probe_port: int = Field(default=5098, ge=1024, le=65535)
    #: Drift or tampering with the agent's own router config is always reported; with
    #: this on (the default) the agent also puts its config back at once.
    reapply_on_drift: bool = True
    cellular_probe_port: int = Field(default=5099, ge=1024, le=65535)

    @model_validator(mode="after")
    def _routeros_needs_host(self) -> RouterSection:
        if self.driver == "routeros" and not self.host:
            raise ValueError("driver 'routeros' needs 'host' (the router's address)")
        return self


class LinkSection(_Section):
    interface: str = Field(min_length=1, max_length=15)
    #: Next hop; needed for the cellular link's routing table unless point-to-point.
    gateway: ipaddress.IPv4Address | None = None
    #: Source address for probes; read from the interface when unset.
    source_address: ipaddress.IPv4Address | None = None


class LinksSection(_Section):
    primary: LinkSection
    cellular: LinkSection

    @model_validator(mode="after")
    def _distinct(self) -> LinksSection:
        if self.primary.interface == self.cellular.interface:
            raise ValueError("primary and cellular must be different interfaces")
        return self


class VoipSection(_Section):
    lan_interfaces: list[str] = Field(min_length=1)
    #: The provider's SBCs, in several data centres: probed and classified as VoIP.
    sbc_addresses: list[ipaddress.IPv4Address] = Field(min_length=1)
    #: Extra provider prefixes (media servers) whose SIP/RTP is VoIP too.
    media_prefixes: list[ipaddress.IPv4Network] = Field(default_factory=list)
    sip_ports: list[int] = Field(default_factory=lambda: [5060, 5061], min_length=1)
    rtp_port_min: int = Field(default=10000, ge=1024, le=65535)
    rtp_port_max: int = Field(default=20000, ge=1024, le=65535)
    match_dscp_ef: bool = True
    sip_probe_port: int = Field(default=5060, ge=1, le=65535)

    @model_validator(mode="after")
    def _rtp_range(self) -> VoipSection:
        if self.rtp_port_min > self.rtp_port_max:
            raise ValueError("rtp_port_min must not be above rtp_port_max")
        return self


class HealthSection(_Section):
    #: ICMP targets; empty means the SBC addresses.
    icmp_targets: list[ipaddress.IPv4Address] = Field(default_factory=list)
    primary_interval_s: float = Field(default=0.25, gt=0, le=60)
    #: The cellular link is probed sparsely while idle: each probe costs plan bytes.
    cellular_idle_interval_s: float = Field(default=45.0, ge=5, le=600)
    cellular_active_interval_s: float = Field(default=1.0, gt=0, le=60)
    sip_interval_s: float = Field(default=5.0, gt=0, le=600)
    #: SIP OPTIONS over an idle LTE link: ~1 KB each, so every 10 min is ~4 MB a month.
    cellular_idle_sip_interval_s: float = Field(default=600.0, ge=30, le=3600)
    down_after_s: float = Field(default=1.0, gt=0, le=60)
    min_targets_up: int = Field(default=1, ge=1)
    window_s: float = Field(default=10.0, gt=0, le=600)
    #: One-way loss estimated from round-trip probes (see docs/health.md).
    degraded_loss_pct: float = Field(default=5.0, ge=0, le=100)
    degraded_rtt_ms: float = Field(default=300.0, gt=0)
    degraded_jitter_ms: float = Field(default=40.0, gt=0)
    degraded_mos: float = Field(default=3.6, ge=1, le=4.5)
    codec: Literal["g711", "g729"] = "g711"
    sip_required: bool = True
    cellular_better_margin_mos: float = Field(default=0.5, ge=0, le=4)


class FailoverSection(_Section):
    dwell_s: float = Field(default=120.0, ge=0)
    wait_for_calls: bool = True
    max_call_wait_s: float = Field(default=600.0, ge=0)
    degraded_hold_s: float = Field(default=10.0, ge=0)
    flap_window_s: float = Field(default=1800.0, ge=0)
    dwell_max_s: float = Field(default=1800.0, ge=0)


class PlanSection(_Section):
    #: Decimal GB (10^9 bytes), as carriers bill.
    cap_gb: float = Field(default=2.0, gt=0)
    #: Cycles start at local midnight on this day; 29-31 mean the month's last day
    #: where the month is shorter.
    cycle_start_day: int = Field(default=1, ge=1, le=31)
    #: IANA time zone of the carrier's calendar month (DST is followed).
    timezone: str = "UTC"
    #: Every extra GB, or part of one, costs this much.
    overage_usd_per_gb: float = Field(default=15.0, ge=0)
    #: "decimal" (10^9 bytes, as carriers bill) or "binary" (2^30 bytes).
    gb_unit: Literal["decimal", "binary"] = "decimal"
    #: Percent of the cap at which an alert is raised (each once per cycle).
    thresholds_pct: list[float] = Field(
        default_factory=lambda: [50.0, 75.0, 90.0, 100.0], min_length=1
    )

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(
                "must be an IANA time zone such as 'America/Chicago'"
            ) from exc
        return value

    @field_validator("thresholds_pct")
    @classmethod
    def _thresholds(cls, value: list[float]) -> list[float]:
        if any(not 0 < pct <= 1000 for pct in value):
            raise ValueError("each threshold must be above 0 and at most 1000 percent")
        return sorted(set(value))


class MeterSection(_Section):
    """The data meter's own knobs (agent/meter, docs/meter.md)."""

    #: How often the cellular interface's counters are read.
    poll_interval_s: float = Field(default=5.0, gt=0, le=60)
    #: Flash wear: the meter writes at most this often (and on every event).
    persist_interval_s: float = Field(default=60.0, gt=0, le=3600)
    #: Added to measured bytes before comparing with the cap (the carrier may count more).
    safety_margin_pct: float = Field(default=1.0, ge=0, le=50)
    #: Header bytes per packet removed when the counters count Ethernet frames
    #: (14; 18 with a VLAN tag).
    frame_overhead_bytes: int = Field(default=14, ge=0, le=64)
    #: The month-end projection uses the rate over this many recent days.
    projection_window_days: float = Field(default=7.0, gt=0, le=31)
    #: At this share of the cap the agent cuts its own telemetry to the minimum.
    telemetry_minimum_at_pct: float = Field(default=100.0, gt=0)
    #: Packetisation of calls, for talk minutes left (with [health] codec).
    ptime_ms: float = Field(default=20.0, ge=5, le=120)
    #: Primary-use warnings, per cycle: VoIP on LTE while the primary was healthy ...
    warn_lte_primary_healthy_s: float = Field(default=300.0, ge=0)
    #: ... LTE bytes while VoIP was on the primary ...
    warn_idle_bytes: int = Field(default=50_000_000, ge=0)
    #: ... and VoIP on LTE for more than this share of the cycle.
    warn_lte_share_pct: float = Field(default=25.0, gt=0, le=100)


class MqttSection(_Section):
    #: No host: telemetry is off (the agent still fails over).
    host: str | None = None
    #: The broker's IPv4 addresses when `host` is a name: in failover the agent's own
    #: MQTT follows VoIP onto LTE by destination (an IPv4 `host` counts by itself).
    broker_addresses: list[ipaddress.IPv4Address] = Field(default_factory=list)
    port: int = Field(default=8883, ge=1, le=65535)
    tls: bool = True
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    username: str | None = None
    password: SecretStr | None = None
    password_file: Path | None = None
    keepalive_s: int = Field(default=60, ge=5, le=3600)
    #: Keepalive while the agent's MQTT rides the LTE link: every PINGREQ/PINGRESP costs
    #: ~250 bytes on the wire; keep it under the carrier's NAT idle timeout.
    keepalive_cellular_s: int = Field(default=1200, ge=30, le=7200)
    #: The broker keeps the session (and honours the will delay) this long after a drop.
    session_expiry_s: int = Field(default=86_400, ge=0, le=2_592_000)
    #: The last will (`online: false`) waits this long, so a restart does not flap.
    will_delay_s: int = Field(default=60, ge=0, le=3600)
    #: Reconnect back-off: full jitter between reconnect_min_s/4 and this, doubling.
    reconnect_min_s: float = Field(default=2.0, gt=0, le=300)
    reconnect_max_s: float = Field(default=120.0, gt=0, le=3600)
    #: After the broker refuses the credentials or certificate: wait this long (jittered).
    auth_backoff_s: float = Field(default=900.0, ge=10, le=86_400)
    #: No PUBACK for this long: drop the connection and resend.
    ack_timeout_s: float = Field(default=120.0, ge=5, le=3600)
    #: "auto" tries MQTT 5 and falls back to 3.1.1 if the broker refuses it.
    protocol: Literal["auto", "5", "3.1.1"] = "auto"
    #: Telemetry is sent when it changes, and at least this often (heartbeat).
    heartbeat_s: float = Field(default=300.0, ge=10, le=86_400)
    heartbeat_cellular_s: float = Field(default=3600.0, ge=60, le=86_400)
    #: On LTE, changes are gathered this long and sent as one message.
    batch_cellular_s: float = Field(default=900.0, ge=0, le=86_400)

    @model_validator(mode="after")
    def _backoff_range(self) -> MqttSection:
        if self.reconnect_min_s > self.reconnect_max_s:
            raise ValueError("reconnect_min_s must not be above reconnect_max_s")
        return self


class ModemSection(_Section):
    """The LTE modem the agent watches (signal, SIM, registration; hang recovery)."""

    #: "none", "at" (USB/serial modem), "netgear" (the Ethernet modem's JSON API),
    #: "routeros-lte" (a MikroTik's built-in modem, through the [router] connection).
    driver: Literal["none", "at", "netgear", "routeros-lte"] = "none"
    #: routeros-lte: the router's LTE interface.
    interface: str = Field(default="lte1", min_length=1, max_length=32)
    #: AT: a device path, a /dev/serial/by-id/... link (best), or a socket:// URL.
    port: str | None = None
    #: AT: quectel, sierra or telit; unset: detected from +CGMI.
    vendor: Literal["quectel", "sierra", "telit"] | None = None
    #: Netgear: the modem's address and admin password.
    host: str | None = None
    password: SecretStr | None = None
    password_file: Path | None = None
    poll_s: float = Field(default=30.0, ge=1, le=3600)
    timeout_s: float = Field(default=5.0, gt=0, le=120)

    @model_validator(mode="after")
    def _needs_address(self) -> ModemSection:
        if self.driver == "at" and not self.port:
            raise ValueError("driver 'at' needs 'port' (e.g. /dev/serial/by-id/...)")
        if self.driver == "netgear" and not self.host:
            raise ValueError("driver 'netgear' needs 'host' (the modem's address)")
        return self


class LocationSection(_Section):
    """The location guard: events when the equipment seems to leave the business address."""

    #: Countries (E.212 MCCs) the service may run in: United States 310-316, Canada 302.
    allowed_mccs: list[str] = Field(
        default_factory=lambda: ["302", "310", "311", "312", "313", "314", "315", "316"],
        min_length=1,
    )
    #: A cell never seen at installation counts once it persists this many reports ...
    min_samples: int = Field(default=6, ge=1, le=10_000)
    #: ... and this long (neighbour cells come and go).
    min_duration_s: float = Field(default=7200.0, ge=0, le=30 * 86400)
    #: GNSS fixes (where the modem has GNSS) further than this from the installation fix.
    gnss_radius_m: float = Field(default=1000.0, gt=0, le=1_000_000)
    #: How often to ask the modem for a GNSS fix.
    gnss_every_s: float = Field(default=300.0, ge=10, le=86400)

    @field_validator("allowed_mccs")
    @classmethod
    def _mccs_are_three_digits(cls, value: list[str]) -> list[str]:
        bad = [m for m in value if not re.fullmatch(r"\d{3}", m)]
        if bad:
            raise ValueError(f"allowed_mccs must be three-digit country codes, not {bad}")
        return value


class InstallerSection(_Section):
    """The installer's failover test (`cpe-agent failover-test`, docs/installer.md)."""

    #: The whole test, failback included, ends within this (the providers allow 2 min).
    max_duration_s: float = Field(default=120.0, ge=20, le=600)
    #: The test's own traffic over LTE stays under this many bytes (shown in the report).
    max_lte_bytes: int = Field(default=500_000, ge=50_000, le=20_000_000)
    #: UDP echo responders (RFC 862) for the RTP-sized round trips and the capacity
    #: estimate; empty: each SBC address at `echo_port`.
    echo_hosts: list[ipaddress.IPv4Address] = Field(default_factory=list)
    echo_port: int = Field(default=7, ge=1, le=65535)
    #: RTP-sized datagrams per link (50 = one second of 20 ms G.711 packets).
    rtp_packets: int = Field(default=50, ge=10, le=500)
    #: Bandwidth of one call for the capacity estimate (G.711 with IP/UDP/RTP, both ways).
    call_kbps: float = Field(default=90.0, gt=0, le=1000)
    #: Fewer simultaneous calls than this over LTE is a warning (the site's busiest hour).
    expected_calls: int = Field(default=2, ge=1, le=500)
    #: A MOS below this on a link fails the test (G.107: below 3.1 most users complain).
    fail_mos: float = Field(default=3.1, ge=1, le=4.5)
    #: A forced switch slower than this is a warning.
    warn_switch_ms: float = Field(default=2000.0, gt=0)


class Settings(BaseSettings):
    """The whole configuration; one model per TOML section."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    agent: AgentSection
    router: RouterSection = RouterSection()
    links: LinksSection
    voip: VoipSection
    health: HealthSection = HealthSection()
    failover: FailoverSection = FailoverSection()
    plan: PlanSection = PlanSection()
    meter: MeterSection = MeterSection()
    mqtt: MqttSection = MqttSection()
    modem: ModemSection = ModemSection()
    location: LocationSection = LocationSection()
    installer: InstallerSection = InstallerSection()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if settings_cls.model_config.get("toml_file"):
            sources.append(TomlConfigSettingsSource(settings_cls))
        return tuple(sources)

    @model_validator(mode="after")
    def _routeros_lte_needs_routeros(self) -> Settings:
        if self.modem.driver == "routeros-lte" and self.router.driver != "routeros":
            raise ValueError(
                "modem driver 'routeros-lte' reads the MikroTik's built-in modem through "
                "the [router] connection, so it needs router driver 'routeros'"
            )
        return self

    def echo_targets(self) -> list[tuple[str, int]]:
        """Where the installer's test sends its RTP-sized round trips (UDP echo)."""
        hosts = self.installer.echo_hosts or self.voip.sbc_addresses
        return [(str(h), self.installer.echo_port) for h in hosts]

    def probe_targets(self) -> list[str]:
        targets = self.health.icmp_targets or self.voip.sbc_addresses
        return [str(t) for t in targets]

    def voip_prefixes(self) -> list[str]:
        sbcs = [f"{a}/32" for a in self.voip.sbc_addresses]
        return sbcs + [str(p) for p in self.voip.media_prefixes]


def load_settings(path: Path) -> Settings:
    """Read, merge and validate; raise ConfigError with one sentence per problem."""
    problems: list[str] = []
    if not path.exists():
        raise ConfigError(
            [
                f"{path}: the file does not exist; "
                "copy packaging/agent.example.toml there and edit it."
            ]
        )
    try:
        with path.open("rb") as handle:
            tomllib.load(handle)
    except tomllib.TOMLDecodeError as exc:
        problem = f"{path}: not valid TOML ({exc}); fix the syntax there."
        raise ConfigError([problem]) from exc
    except OSError as exc:
        problem = f"{path}: cannot be read ({exc.strerror}); check its permissions."
        raise ConfigError([problem]) from exc
    try:
        settings: Settings = _settings_from_file(path)()  # type: ignore[call-arg]
    except ValidationError as exc:
        for error in exc.errors():
            problems.append(_sentence(path, error))
        raise ConfigError(problems) from exc
    secret_problems = _check_secret_files(path, settings)
    if secret_problems:
        raise ConfigError(secret_problems)
    return settings


def _settings_from_file(path: Path) -> type[Settings]:
    """A Settings subclass bound to one TOML file (pydantic-settings reads it from config)."""

    class FileSettings(Settings):
        model_config = SettingsConfigDict(toml_file=path)

    return FileSettings


def read_secret(value: SecretStr | None, file: Path | None) -> str | None:
    """A secret from the config, or from its file (trailing newline stripped)."""
    if file is not None:
        return file.read_text(encoding="utf-8").rstrip("\n")
    return value.get_secret_value() if value is not None else None


def _check_secret_files(path: Path, settings: Settings) -> list[str]:
    problems = []
    for section, key in (
        ("router", "password_file"),
        ("mqtt", "password_file"),
        ("modem", "password_file"),
    ):
        file = getattr(getattr(settings, section), key)
        if file is not None and not os.access(file, os.R_OK):
            problems.append(
                f"{path}: [{section}] {key} = {file}: the file cannot be read; "
                "create it or fix its permissions."
            )
    return problems


def _sentence(path: Path, error: Any) -> str:
    loc = [str(part) for part in error.get("loc", ())]
    section = loc[0] if loc else ""
    key = ".".join(loc[1:])
    where = f"[{section}] {key}".strip() if key else f"[{section}]"
    kind = error.get("type", "")
    message = error.get("msg", "is invalid")
    if kind == "missing":
        what = "is required but missing; add it (see packaging/agent.example.toml)"
    elif kind == "extra_forbidden":
        what = "is not a known setting; check its spelling against packaging/agent.example.toml"
    else:
        message = message.removeprefix("Value error, ")
        given = error.get("input")
        shown = f" (got {given!r})" if given is not None and not isinstance(given, dict) else ""
        what = f"{message[:1].lower()}{message[1:]}{shown}"
    return f"{path}: {where} {what}."
