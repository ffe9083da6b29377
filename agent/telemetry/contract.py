"""The MQTT contract between the agent and the provider's fleet side, version 1.

Topics live under `cpe/v1/{device_id}/`; every payload is a small JSON object that
carries `"v": 1`. This module is the contract and nothing else: topic names, pydantic
payload models and pure builders that take the time as an argument. It does no I/O,
reads no clock and does not log, so both ends (the agent's `telemetry.mqtt`, the
fleet console) share it and the tests read it from tables. `docs/mqtt.md` is its prose.

Compatibility: additions that an old reader can ignore (a new optional field, a new
event kind) keep `v = 1`; readers therefore ignore fields they do not know (the models
are built with `extra="ignore"`). Anything else is `v = 2` under `cpe/v2/`.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from agent.domain import Mode, Verdict

VERSION: Literal[1] = 1
TOPIC_ROOT = f"cpe/v{VERSION}"
#: Same rule as the config's `agent.device_id` (kept here so this module stays pure).
DEVICE_ID_PATTERN = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
#: An epoch names one event sequence (one state database): lower-case hex.
EPOCH_PATTERN = r"^[0-9a-f]{8,32}$"
#: An event published more than this long after it happened carries `late: true`.
LATE_AFTER_S = 60.0


class Channel(enum.StrEnum):
    """The last topic level; each has one payload model, QoS and retain flag."""

    STATE = "state"  # StatePayload, QoS 1, retained; also the last will
    EVT = "evt"  # EventPayload, QoS 1, from the outbox (at least once, in seq order)
    TELE = "tele"  # TelemetryPayload, QoS 0, not retained; dropped while offline


QOS: dict[Channel, int] = {Channel.STATE: 1, Channel.EVT: 1, Channel.TELE: 0}
RETAIN: dict[Channel, bool] = {Channel.STATE: True, Channel.EVT: False, Channel.TELE: False}


class ContractError(ValueError):
    """A topic or payload that does not fit the contract."""


def check_device_id(device_id: str) -> str:
    if not DEVICE_ID_PATTERN.match(device_id):
        raise ContractError(
            f"device id {device_id!r} is not valid on MQTT topics: "
            "use 1-63 of a-z, 0-9 and '-', starting with a letter or digit"
        )
    return device_id


def topic(device_id: str, channel: Channel) -> str:
    return f"{TOPIC_ROOT}/{check_device_id(device_id)}/{Channel(channel).value}"


def parse_topic(name: str) -> tuple[str, Channel]:
    """`cpe/v1/site-1/evt` -> ("site-1", Channel.EVT); the fleet side's entry point."""
    parts = name.split("/")
    if len(parts) != 4 or "/".join(parts[:2]) != TOPIC_ROOT:
        raise ContractError(f"topic {name!r} is not under {TOPIC_ROOT}/<device_id>/<channel>")
    try:
        channel = Channel(parts[3])
    except ValueError:
        raise ContractError(f"topic {name!r}: unknown channel {parts[3]!r}") from None
    return check_device_id(parts[2]), channel


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class _Payload(_Model):
    v: Literal[1] = VERSION

    def to_json(self) -> bytes:
        """Compact JSON without the fields that are None (bytes matter on LTE)."""
        return self.model_dump_json(exclude_none=True).encode()


class StatePayload(_Payload):
    """Retained on `state`: the birth on every connect, and (online false) the last will."""

    online: bool
    mode: Mode | None = None
    #: Wall-clock seconds (Unix time) when the agent entered `mode`.
    since: float | None = None


class EventPayload(_Payload):
    """One durable event from the agent's event log, delivered at least once.

    `(epoch, seq)` identifies it: a reader keeps the highest `seq` per device and epoch
    and drops what it has seen; a new `epoch` starts a new sequence.
    """

    epoch: str = Field(pattern=EPOCH_PATTERN)
    seq: int = Field(ge=1)
    #: An EventKind value (failover, failback, ...); readers accept kinds they do not know.
    kind: str = Field(pattern=r"^[a-z][a-z0-9_]{0,39}$")
    #: Wall-clock seconds (Unix time) when it happened (not when it was sent).
    wall_time_s: float
    data: dict[str, Any] = Field(default_factory=dict)
    #: Present (true) only when sent more than LATE_AFTER_S after it happened.
    late: Literal[True] | None = None


class LinkQuality(_Model):
    """One link's recent quality, as the health monitor judged it."""

    verdict: Verdict
    loss_pct: float | None = None
    rtt_ms: float | None = None
    jitter_ms: float | None = None
    mos: float | None = None
    carrier_up: bool | None = None


class TelemetryPayload(_Payload):
    """Periodic link-quality summary on `tele` (QoS 0: a lost one is replaced by the next)."""

    wall_time_s: float
    mode: Mode | None = None
    links: dict[Literal["primary", "cellular"], LinkQuality] = Field(default_factory=dict)


# -- builders (pure: time comes in as an argument) -------------------------------------


def online_state(state: Mapping[str, Any]) -> StatePayload:
    """The birth message from what the agent knows (`mode`, `since`); unknown keys are an error.

    Strict on purpose: a misspelt key from the caller should fail loudly, not vanish.
    """
    unknown = set(state) - {"mode", "since", "online", "v"}
    if unknown:
        raise ContractError(f"state has keys the contract does not know: {sorted(unknown)}")
    fields = {k: v for k, v in state.items() if k in ("mode", "since")}
    if fields.get("since") is not None:
        fields["since"] = round(float(fields["since"]), 3)
    return StatePayload(online=True, **fields)


OFFLINE_STATE = StatePayload(online=False)


def event_message(
    *,
    epoch: str,
    seq: int,
    kind: str,
    wall_time_s: float,
    data: Mapping[str, Any],
    now_wall_s: float,
    late_after_s: float = LATE_AFTER_S,
) -> EventPayload:
    late: Literal[True] | None = True if now_wall_s - wall_time_s > late_after_s else None
    return EventPayload(
        epoch=epoch,
        seq=seq,
        kind=kind,
        wall_time_s=round(wall_time_s, 3),
        data=dict(data),
        late=late,
    )


def telemetry_message(
    *, wall_time_s: float, links: Mapping[str, Mapping[str, Any]], mode: str | None = None
) -> TelemetryPayload:
    """A summary from per-link figures (e.g. `health.wiring.assessment_figures`).

    Lenient on purpose: it picks the contract's fields and leaves the rest (reasons,
    target counts) behind, so the status figures can be passed as they are.
    """
    picked = {
        role: {k: v for k, v in figures.items() if k in LinkQuality.model_fields}
        for role, figures in links.items()
    }
    for figures in picked.values():
        for key in ("loss_pct", "rtt_ms", "jitter_ms", "mos"):
            if isinstance(figures.get(key), float):
                figures[key] = round(figures[key], 2)
    return TelemetryPayload.model_validate(
        {"wall_time_s": round(wall_time_s, 3), "mode": mode, "links": picked}
    )


def json_schemas() -> dict[str, dict[str, Any]]:
    """JSON Schema of each channel's payload (for the fleet side and docs/mqtt.md)."""
    return {
        Channel.STATE.value: StatePayload.model_json_schema(),
        Channel.EVT.value: EventPayload.model_json_schema(),
        Channel.TELE.value: TelemetryPayload.model_json_schema(),
    }
