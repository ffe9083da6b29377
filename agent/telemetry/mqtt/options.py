"""What the `[mqtt]` settings become for a client: its tunables (`MqttOptions`), its
password and its TLS context; `TelemetryError` when they cannot be used."""

from __future__ import annotations

import ssl
from dataclasses import dataclass, fields
from typing import Any, Literal

from agent.config import MqttSection, read_secret
from agent.telemetry import contract

Uplink = Literal["primary", "cellular"]


@dataclass(frozen=True)
class MqttOptions:
    """The client's tunables: by default those of `[mqtt]` (`from_settings`), plus a few
    internals; tests pass their own to run fast."""

    #: After an unclean loss (or a stop) the broker waits this long before the will.
    will_delay_s: int = 60
    #: The broker keeps the session (and will delay) this long after a disconnect.
    session_expiry_s: int = 86_400
    reconnect_base_s: float = 2.0
    reconnect_max_s: float = 120.0
    #: After the broker refused the credentials or certificate (jittered 50-100%).
    auth_backoff_s: float = 900.0
    #: Connections in a row that the broker closed before CONNACK (a refused client
    #: certificate under TLS 1.3 looks like this) before waiting `auth_backoff_s`.
    closed_before_connack_limit: int = 3
    #: A connection that lasted this long starts the back-off from the beginning again.
    stable_after_s: float = 60.0
    connect_timeout_s: float = 15.0
    keepalive_s: int = 60
    keepalive_cellular_s: int = 1200
    protocol: Literal["auto", "5", "3.1.1"] = "auto"
    #: Events published and not yet acknowledged, at most.
    window: int = 10
    #: No PUBACK for this long: drop the connection and resend (the only resend MQTT allows).
    ack_timeout_s: float = 120.0
    #: Look at the store this often without a wake-up (events written by another process).
    poll_s: float = 5.0
    #: On stop, wait this long for outstanding PUBACKs before disconnecting.
    drain_on_stop_s: float = 2.0
    late_after_s: float = contract.LATE_AFTER_S
    heartbeat_s: float = 300.0
    heartbeat_cellular_s: float = 3600.0
    batch_cellular_s: float = 900.0
    min_tele_interval_s: float = 10.0

    @classmethod
    def from_settings(cls, settings: MqttSection, **overrides: Any) -> MqttOptions:
        mapped = {
            "will_delay_s": settings.will_delay_s,
            "session_expiry_s": settings.session_expiry_s,
            "reconnect_base_s": settings.reconnect_min_s,
            "reconnect_max_s": settings.reconnect_max_s,
            "auth_backoff_s": settings.auth_backoff_s,
            "keepalive_s": settings.keepalive_s,
            "keepalive_cellular_s": settings.keepalive_cellular_s,
            "protocol": settings.protocol,
            "ack_timeout_s": settings.ack_timeout_s,
            "heartbeat_s": settings.heartbeat_s,
            "heartbeat_cellular_s": settings.heartbeat_cellular_s,
            "batch_cellular_s": settings.batch_cellular_s,
        }
        return cls(**{**mapped, **overrides})

    def replace(self, **changes: Any) -> MqttOptions:
        return MqttOptions(**{**{f.name: getattr(self, f.name) for f in fields(self)}, **changes})


class TelemetryError(Exception):
    """The MQTT settings cannot be used (no host, unreadable certificate, key or password)."""


def read_password(settings: MqttSection) -> str | None:
    try:
        return read_secret(settings.password, settings.password_file)
    except OSError as exc:
        raise TelemetryError(
            f"cannot read [mqtt] password_file {settings.password_file} "
            f"({exc.strerror}); create it or fix its permissions."
        ) from exc


def tls_context(s: MqttSection) -> ssl.SSLContext:
    """TLS 1.2+, the broker checked against `ca_file` (pinned) or the system CAs."""
    if s.key_file is not None and s.cert_file is None:
        raise TelemetryError("[mqtt] key_file is set without cert_file; set both or neither.")
    try:
        context = ssl.create_default_context(cafile=str(s.ca_file) if s.ca_file else None)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if s.cert_file is not None:
            context.load_cert_chain(s.cert_file, s.key_file)
    except OSError as exc:  # ssl.SSLError is an OSError
        raise TelemetryError(
            f"cannot use the MQTT TLS files ({exc}); check [mqtt] ca_file, cert_file and key_file."
        ) from exc
    return context
