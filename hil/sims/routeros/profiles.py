"""Firmware profiles (what differs between RouterOS versions) and hardware models.

Each difference names its evidence; docs/sims-routeros.md has the full list.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


@dataclass(frozen=True)
class Profile:
    name: str
    version: str  # as /system/resource prints it
    major: int
    # 7.18 changelog: "console - put !empty sentence when API query returns nothing";
    # wire traces in GideonLeGrange/mikrotik-java#89 and pear2/Net_RouterOS#80 show
    # "!empty" followed by "!done".
    sends_empty: bool
    # 7.10 moved dates to ISO "2023-06-20 10:30:00"; older: "Jun/20/2023 10:30:00".
    iso_dates: bool
    # "unknown parameter" on 6.49 (terraform-routeros#407), "unknown parameter NAME"
    # on 7.x (terraform-routeros#535, #679).
    names_unknown_parameter: bool
    build_time: datetime
    firmware: str
    # User group policies (RouterOS prints disabled ones with a leading "!").
    policies: tuple[str, ...]

    @property
    def v7(self) -> bool:
        return self.major >= 7

    def format_datetime(self, dt: datetime) -> str:
        if self.iso_dates:
            return dt.strftime("%Y-%m-%d %H:%M:%S")
        return f"{MONTHS[dt.month - 1]}/{dt.day:02d}/{dt.year} {dt:%H:%M:%S}"


_V6_POLICIES = (
    "local", "telnet", "ssh", "ftp", "reboot", "read", "write", "policy", "test", "winbox",
    "password", "web", "sniff", "sensitive", "api", "romon", "dude", "tikapp",
)
_V7_POLICIES = (
    "local", "telnet", "ssh", "ftp", "reboot", "read", "write", "policy", "test", "winbox",
    "password", "web", "sniff", "sensitive", "api", "romon", "rest-api",
)

PROFILES: dict[str, Profile] = {
    "6.49": Profile(
        name="6.49", version="6.49.17 (long-term)", major=6, sends_empty=False,
        iso_dates=False, names_unknown_parameter=False,
        build_time=datetime(2024, 8, 12, 11, 5, 1), firmware="6.49.17", policies=_V6_POLICIES,
    ),
    "7.17": Profile(
        name="7.17", version="7.17.2 (stable)", major=7, sends_empty=False,
        iso_dates=True, names_unknown_parameter=True,
        build_time=datetime(2025, 2, 12, 8, 31, 42), firmware="7.17.2", policies=_V7_POLICIES,
    ),
    "7.18": Profile(
        name="7.18", version="7.18.2 (stable)", major=7, sends_empty=True,
        iso_dates=True, names_unknown_parameter=True,
        build_time=datetime(2025, 3, 11, 10, 13, 22), firmware="7.18.2", policies=_V7_POLICIES,
    ),
}


@dataclass(frozen=True)
class Model:
    key: str
    board_name: str
    model: str
    architecture: str
    total_memory: int
    cpu: str
    cpu_count: int
    ethernet: tuple[str, ...]
    modem_port: str | None  # where the external (Ethernet) LTE modem is plugged in
    has_lte: bool = False  # a built-in modem: interface lte1
    min_major: int = 6
    extra: dict[str, str] = field(default_factory=dict)


def _ethers(n: int) -> tuple[str, ...]:
    return tuple(f"ether{i}" for i in range(1, n + 1))


MODELS: dict[str, Model] = {
    "RB2011": Model(
        key="RB2011", board_name="RB2011UiAS", model="RB2011UiAS", architecture="mipsbe",
        total_memory=128 * 1024 * 1024, cpu="MIPS 74Kc V4.12", cpu_count=1,
        ethernet=_ethers(10), modem_port="ether10",
    ),
    "hAP-ac2": Model(
        key="hAP-ac2", board_name="hAP ac^2", model="RBD52G-5HacD2HnD", architecture="arm",
        total_memory=128 * 1024 * 1024, cpu="ARMv7", cpu_count=4,
        ethernet=_ethers(5), modem_port="ether5",
    ),
    "hAP-ax3": Model(
        key="hAP-ax3", board_name="hAP ax^3", model="C53UiG+5HPaxD2HPaxD",
        architecture="arm64", total_memory=1024 * 1024 * 1024, cpu="ARM64", cpu_count=4,
        ethernet=_ethers(5), modem_port="ether5", min_major=7,
    ),
    "RB5009": Model(
        key="RB5009", board_name="RB5009UG+S+", model="RB5009UG+S+", architecture="arm64",
        total_memory=1024 * 1024 * 1024, cpu="ARM64", cpu_count=4,
        ethernet=_ethers(8), modem_port="ether8", min_major=7,
    ),
    "Chateau-LTE": Model(
        key="Chateau-LTE", board_name="Chateau LTE12", model="D53G-5HacD2HnD-TC&EG12-EA",
        architecture="arm", total_memory=256 * 1024 * 1024, cpu="ARMv7", cpu_count=4,
        ethernet=_ethers(5), modem_port=None, has_lte=True,
    ),
}


def get_profile(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown profile {name!r}; known: {', '.join(PROFILES)}") from None


def get_model(key: str, profile: Profile) -> Model:
    try:
        model = MODELS[key]
    except KeyError:
        raise ValueError(f"unknown model {key!r}; known: {', '.join(MODELS)}") from None
    if profile.major < model.min_major:
        raise ValueError(f"{key} does not run RouterOS {profile.major} (needs v{model.min_major})")
    return model
