"""When the device's MQTT client tries again, and why: pure (no I/O, no clock, no paho).

- `backoff_delay_s`: exponential back-off with full jitter, so a fleet that lost its
  broker does not come back in one wave.
- `auth_delay_s`: a refused login or certificate waits `auth_backoff_s` (jittered
  50-100 %): a wrong password does not fix itself, and a thousand sites retrying it
  every two minutes is an attack on the broker.
- `Refused` and the TLS checks sort a failed connect into "auth", "closed",
  "protocol" or "other", which is what the reconnect loop decides on.
"""

from __future__ import annotations

import ssl

#: CONNACK reason codes that say "who you are is not welcome" (MQTT 5; paho maps the
#: 3.1.1 return codes 4 and 5 onto 0x86 and 0x87).
AUTH_REFUSALS = frozenset({0x85, 0x86, 0x87, 0x8A, 0x8C})
UNSUPPORTED_PROTOCOL = 0x84

#: Words of a TLS alert that mean "your certificate, or our trust, is the problem".
TLS_REFUSALS = ("alert unknown ca", "bad certificate", "certificate required",
                "certificate unknown", "certificate expired", "certificate revoked",
                "access denied")  # fmt: skip


class Refused(Exception):
    """The broker answered CONNECT with a failure reason code, or closed before CONNACK."""

    def __init__(self, reason: str, code: int | None, tls_alert: bool = False) -> None:
        super().__init__(reason)
        self.code = code
        self.tls_alert = tls_alert

    @property
    def kind(self) -> str:
        if self.tls_alert:
            return "auth"
        if self.code is None:
            return "closed"
        if self.code in AUTH_REFUSALS:
            return "auth"
        if self.code == UNSUPPORTED_PROTOCOL:
            return "protocol"
        return "other"


def backoff_delay_s(attempt: int, base_s: float, max_s: float, rand: float) -> float:
    """Full jitter: uniform between base/4 and min(max, base * 2**attempt); `rand` in [0, 1)."""
    ceiling = min(max_s, base_s * 2 ** min(attempt, 30))
    floor = min(base_s / 4, ceiling)
    return floor + (ceiling - floor) * rand


def auth_delay_s(auth_backoff_s: float, rand: float) -> float:
    """The wait after a refused login or certificate: 50-100 % of `auth_backoff_s`."""
    return auth_backoff_s * (0.5 + 0.5 * rand)


def is_auth_tls_error(exc: BaseException) -> bool:
    """TLS failures that retrying soon will not fix: trust, or our certificate refused."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return True
    text = str(exc).lower()
    return isinstance(exc, ssl.SSLError) and any(word in text for word in TLS_REFUSALS)


def is_tls_refusal(text: str) -> bool:
    """A line of paho's log that reports a TLS alert refusing us (see `is_auth_tls_error`)."""
    lowered = text.lower()
    return "ssl" in lowered and any(word in lowered for word in TLS_REFUSALS)
