"""The fleet side's settings: one TOML file (`fleet.toml`) and a sites file (`sites.toml`).

Separate from the agent's `agent.toml` on purpose: these run at the provider, with the
provider's broker identity, SMTP server and customer addresses, none of which belongs
on a site's device. Errors are `ConfigError`s with one sentence per problem, as for
the agent's own file.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from agent.config import ConfigError, MqttSection
from agent.telemetry.contract import DEVICE_ID_PATTERN

DEFAULT_FLEET_CONFIG = Path("/etc/cpe-agent/fleet.toml")
FLEET_CONFIG_ENV = "CPE_FLEET_CONFIG"
EMAIL = r"^[^@\s]+@[^@\s]+\.[^@\s]+$"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SmtpSection(_Section):
    host: str = "localhost"
    port: int = Field(default=25, ge=1, le=65535)
    #: STARTTLS after EHLO (port 587); `ssl` for implicit TLS (port 465).
    starttls: bool = False
    ssl: bool = False
    username: str | None = None
    password: SecretStr | None = None
    password_file: Path | None = None
    timeout_s: float = Field(default=20.0, gt=0, le=300)
    from_address: str = Field(default="cpe-alerts@localhost", pattern=EMAIL)


class NotifierSection(_Section):
    #: MQTT client id; give each running instance its own (they share the work).
    client_id: str = Field(default="fleet-notifier", min_length=1, max_length=64)
    #: The shared-subscription group: instances in one group split the messages.
    share_group: str = Field(default="notifier", pattern=r"^[A-Za-z0-9_-]{1,32}$")
    #: De-duplication and the mail queue (SQLite).
    state_file: Path = Path("/var/lib/cpe-agent-fleet/notifier.db")
    sites_file: Path = Path("/etc/cpe-agent/sites.toml")
    support_emails: list[str] = Field(default_factory=list)
    #: A mail that could not be sent is tried again after this, doubling, up to an hour.
    retry_s: float = Field(default=30.0, gt=0, le=3600)

    @field_validator("support_emails")
    @classmethod
    def _emails(cls, value: list[str]) -> list[str]:
        return _check_emails(value)


class WatchSection(_Section):
    client_id: str | None = Field(default=None, max_length=64)


class FleetSettings(_Section):
    mqtt: MqttSection
    smtp: SmtpSection = SmtpSection()
    notifier: NotifierSection = NotifierSection()
    watch: WatchSection = WatchSection()


class Site(_Section):
    name: str = Field(default="", max_length=200)
    emails: list[str] = Field(default_factory=list)

    @field_validator("emails")
    @classmethod
    def _emails(cls, value: list[str]) -> list[str]:
        return _check_emails(value)


class SiteBook(_Section):
    sites: dict[str, Site] = Field(default_factory=dict)

    @field_validator("sites")
    @classmethod
    def _ids(cls, value: dict[str, Site]) -> dict[str, Site]:
        bad = [key for key in value if not DEVICE_ID_PATTERN.match(key)]
        if bad:
            raise ValueError(f"site ids must be device ids (a-z, 0-9, '-'): {bad}")
        return value

    def site(self, device_id: str) -> Site | None:
        return self.sites.get(device_id)


def _check_emails(value: list[str]) -> list[str]:
    bad = [v for v in value if not re.match(EMAIL, v)]
    if bad:
        raise ValueError(f"not e-mail addresses: {bad}")
    return value


def _read_toml(path: Path, remedy: str) -> dict[str, Any]:
    if not path.exists():
        raise ConfigError([f"{path}: the file does not exist; {remedy}"])
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: not valid TOML ({exc}); fix the syntax there."]) from exc
    except OSError as exc:
        problem = f"{path}: cannot be read ({exc.strerror}); check its permissions."
        raise ConfigError([problem]) from exc


def _problems(path: Path, exc: ValidationError) -> list[str]:
    problems = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error.get("loc", ()))
        if error.get("type") == "missing":
            what = "is required but missing"
        elif error.get("type") == "extra_forbidden":
            what = "is not a known setting; check its spelling (see docs/fleet.md)"
        else:
            what = str(error.get("msg", "is invalid")).removeprefix("Value error, ")
            what = what[:1].lower() + what[1:]
        problems.append(f"{path}: {where} {what}.")
    return problems


def load_fleet_settings(path: Path) -> FleetSettings:
    data = _read_toml(path, "write one as docs/fleet.md shows.")
    try:
        return FleetSettings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_problems(path, exc)) from exc


def load_sites(path: Path) -> SiteBook:
    data = _read_toml(path, "list the sites and their e-mail addresses there (docs/fleet.md).")
    try:
        return SiteBook.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_problems(path, exc)) from exc


def default_fleet_config() -> Path:
    return Path(os.environ.get(FLEET_CONFIG_ENV, DEFAULT_FLEET_CONFIG))
