"""A real MikroTik for the shared router contract suite, named by an operator.

    CPE_RIG_ROUTEROS_HOST=192.168.88.1 CPE_RIG_ROUTEROS_USER=cpe-agent \\
    CPE_RIG_ROUTEROS_PASSWORD=... CPE_RIG_ROUTEROS_CA_FILE=router-ca.pem \\
        .venv/bin/pytest -q tests/contract -k rig

Without CPE_RIG_ROUTEROS_HOST the rig's tests skip and say why. See README.md beside
this file for what the run does to the router (it installs and removes the agent's
tagged items, pointed at documentation addresses) and the variables it reads.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from drivers.types import VoipPolicy

PREFIX = "CPE_RIG_ROUTEROS_"
#: The rig steers documentation addresses only: nothing real is ever sent by LTE.
RIG_SBC = "203.0.113.10/32"
RIG_MEDIA = "203.0.113.96/28"
RIG_AGENT = "203.0.113.53/32"


@dataclass(frozen=True)
class RigConfig:
    host: str
    user: str
    password: str
    port: int | None = None
    plain_api: bool = False
    ca_file: str | None = None
    tls_verify: bool = True
    timeout_s: float = 10.0
    primary: str = "ether1"
    cellular: str = "ether10"
    cellular_gateway: str | None = "192.168.5.1"
    cellular_address: str | None = None
    lan: str = "bridge"

    def policy(self) -> VoipPolicy:
        return VoipPolicy(
            primary_interface=self.primary,
            cellular_interface=self.cellular,
            cellular_gateway=self.cellular_gateway,
            lan_interfaces=(self.lan,),
            voip_prefixes=(RIG_SBC, RIG_MEDIA),
            agent_prefixes=(RIG_AGENT,),
            cellular_probe_port=5099,
            primary_probe_port=5098,
        )

    def driver_options(self) -> dict[str, Any]:
        return {
            "host": self.host, "port": self.port, "username": self.user,
            "password": self.password, "plain_api": self.plain_api,
            "tls_ca_file": self.ca_file, "tls_verify": self.tls_verify,
            "timeout_s": self.timeout_s,
        }


def _flag(value: str | None, default: bool) -> bool:
    if value is None or value == "":
        return default
    return value.strip().lower() in ("1", "yes", "true", "on")


def from_env(env: Mapping[str, str] | None = None) -> tuple[RigConfig | None, str]:
    """The rig the operator named, or None and the reason it will be skipped."""
    env = os.environ if env is None else env

    def get(name: str, default: str | None = None) -> str | None:
        return env.get(PREFIX + name) or default

    host = get("HOST")
    if not host:
        return None, (f"no real RouterOS router named: set {PREFIX}HOST, {PREFIX}USER and "
                      f"{PREFIX}PASSWORD (see hil/rigs/README.md) to run the contract suite "
                      "against one")
    user, password = get("USER"), get("PASSWORD")
    if not user or password is None:
        return None, f"{PREFIX}HOST is set but {PREFIX}USER or {PREFIX}PASSWORD is not"
    port = get("PORT")
    gateway = get("CELLULAR_GATEWAY", "192.168.5.1")
    return RigConfig(
        host=host,
        user=user,
        password=password,
        port=int(port) if port else None,
        plain_api=_flag(get("PLAIN"), False),
        ca_file=get("CA_FILE"),
        tls_verify=_flag(get("TLS_VERIFY"), True),
        timeout_s=float(get("TIMEOUT_S", "10") or 10),
        primary=get("PRIMARY", "ether1") or "ether1",
        cellular=get("CELLULAR", "ether10") or "ether10",
        cellular_gateway=None if gateway in ("", "none") else gateway,
        cellular_address=get("CELLULAR_ADDRESS"),
        lan=get("LAN", "bridge") or "bridge",
    ), ""
