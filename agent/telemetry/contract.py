"""The MQTT contract between the agent and the provider's fleet side, version 1.

Topics live under `cpe/v1/{device_id}/`; every payload is a small JSON object that
carries `"v": 1`. This module is the contract and nothing else: topic names, pydantic
payload models and pure builders and checkers that take the time as an argument. It
does no I/O, reads no clock and does not log, so both ends (the agent's
`telemetry.mqtt`, the fleet's notifier and console) share it and the tests read it
from tables. `docs/mqtt.md` is its prose; `docs/schemas/` its JSON Schemas.

Compatibility: additions that an old reader can ignore (a new optional field, a new
event kind, a new command) keep `v = 1`; readers therefore ignore fields they do not
know (the models are built with `extra="ignore"`). Anything else is `v = 2` under
`cpe/v2/`.
"""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from agent.domain import Mode, Verdict

VERSION: Literal[1] = 1
TOPIC_ROOT = f"cpe/v{VERSION}"
#: Same rule as the config's `agent.device_id` (kept here so this module stays pure).
DEVICE_ID_PATTERN = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
#: An epoch names one event sequence (one state database): lower-case hex.
EPOCH_PATTERN = r"^[0-9a-f]{8,32}$"
#: An event published more than this long after it happened carries `late: true`.
LATE_AFTER_S = 60.0
#: A command id: what the fleet chose; the device remembers it for idempotence.
COMMAND_ID_PATTERN = r"^[A-Za-z0-9._:-]{1,64}$"
#: A command or desired config larger than this is refused unread (bytes of JSON).
MAX_COMMAND_BYTES = 4096
#: At most this many events go out again for one `replay_events` command.
MAX_REPLAY = 1000


class Channel(enum.StrEnum):
    """The topic levels after the device id; each has one payload model, QoS and retain flag."""

    STATE = "state"  # StatePayload, device -> fleet, QoS 1, retained; also the last will
    EVT = "evt"  # EventPayload, device -> fleet, QoS 1, from the outbox, in seq order
    TELE = "tele"  # TelemetryPayload, device -> fleet, QoS 0, retained; by exception + heartbeat
    CFG_DES = "cfg/des"  # DesiredConfig, fleet -> device, QoS 1, retained
    CFG_REP = "cfg/rep"  # ReportedConfig, device -> fleet, QoS 1, retained
    CMD_REQ = "cmd/req"  # CommandRequest, fleet -> device, QoS 1, not retained
    CMD_RES = "cmd/res"  # CommandResult, device -> fleet, QoS 1, not retained


QOS: dict[Channel, int] = {
    Channel.STATE: 1,
    Channel.EVT: 1,
    Channel.TELE: 0,
    Channel.CFG_DES: 1,
    Channel.CFG_REP: 1,
    Channel.CMD_REQ: 1,
    Channel.CMD_RES: 1,
}
RETAIN: dict[Channel, bool] = {
    Channel.STATE: True,
    Channel.EVT: False,
    Channel.TELE: True,  # a console that starts sees every site's latest figures
    Channel.CFG_DES: True,
    Channel.CFG_REP: True,
    Channel.CMD_REQ: False,
    Channel.CMD_RES: False,
}
#: What a device writes, and what it reads (the broker's ACL says the same, per device).
DEVICE_PUBLISHES = (Channel.STATE, Channel.EVT, Channel.TELE, Channel.CFG_REP, Channel.CMD_RES)
DEVICE_SUBSCRIBES = (Channel.CFG_DES, Channel.CMD_REQ)


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
    if len(parts) < 4 or "/".join(parts[:2]) != TOPIC_ROOT:
        raise ContractError(f"topic {name!r} is not under {TOPIC_ROOT}/<device_id>/<channel>")
    rest = "/".join(parts[3:])
    try:
        channel = Channel(rest)
    except ValueError:
        raise ContractError(f"topic {name!r}: unknown channel {rest!r}") from None
    return check_device_id(parts[2]), channel


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class _Payload(_Model):
    v: Literal[1] = VERSION

    def to_json(self) -> bytes:
        """Compact JSON without the fields that are None (bytes matter on LTE)."""
        return self.model_dump_json(exclude_none=True).encode()


# -- state, evt ------------------------------------------------------------------------


class StatePayload(_Payload):
    """Retained on `state`: the birth on every connect, and (online false) the last will."""

    online: bool
    mode: Mode | None = None
    #: Wall-clock seconds (Unix time) when the agent entered `mode`.
    since: float | None = None


class EventPayload(_Payload):
    """One durable event from the agent's event log, delivered at least once.

    `(epoch, seq)` identifies it: a reader remembers the seqs it has seen per device
    and epoch and drops repeats; a hole in the seqs is a gap (ask for a replay); a new
    `epoch` starts a new sequence.
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


# -- tele ------------------------------------------------------------------------------


class LinkQuality(_Model):
    """One link's recent quality, as the health monitor judged it."""

    verdict: Verdict
    loss_pct: float | None = None
    rtt_ms: float | None = None
    jitter_ms: float | None = None
    mos: float | None = None
    carrier_up: bool | None = None


class SignalQuality(_Model):
    """The LTE modem's radio figures (normalised at the driver: dBm, dB; unknown absent)."""

    rsrp_dbm: float | None = None
    rsrq_db: float | None = None
    sinr_db: float | None = None
    rssi_dbm: float | None = None
    #: Radio access technology as the modem names it, lower case ("lte", "nr5g", "umts").
    technology: str | None = Field(default=None, max_length=16)
    #: 0-5, the phone-style bars the provider's terms use as a coverage guide.
    bars: int | None = Field(default=None, ge=0, le=5)


class Usage(_Model):
    """LTE plan usage, as the meter reports it (`agent.meter.report.telemetry_figures`).

    Bytes are decimal (10^9 = 1 GB, as carriers bill) and include the meter's margin.
    """

    used_bytes: int | None = Field(default=None, ge=0)
    cap_bytes: int | None = Field(default=None, ge=0)
    percent: float | None = Field(default=None, ge=0)
    overage_usd: float | None = Field(default=None, ge=0)
    #: At the recent rate, by the cycle's end.
    projected_bytes: int | None = Field(default=None, ge=0)
    projected_overage_usd: float | None = Field(default=None, ge=0)
    #: Talk minutes left in the plan (with the configured codec).
    minutes_left: float | None = None
    #: Hours VoIP spent on LTE this cycle.
    lte_hours: float | None = Field(default=None, ge=0)
    #: When the plan cycle began (ISO 8601, the plan's time zone).
    cycle_start: str | None = Field(default=None, max_length=40)
    #: False while the device's clock is not trusted (cycle boundaries uncertain).
    clock_trusted: bool | None = None
    #: This cycle's LTE bytes by kind, where the router can tell them apart (None: it
    #: cannot): VoIP, the agent's own traffic, its MQTT on the wire, blocked non-VoIP.
    voice_bytes: int | None = Field(default=None, ge=0)
    agent_bytes: int | None = Field(default=None, ge=0)
    agent_mqtt_bytes: int | None = Field(default=None, ge=0)
    blocked_bytes: int | None = Field(default=None, ge=0)


class AgentHealth(_Model):
    """How the agent itself is doing."""

    uptime_s: float | None = Field(default=None, ge=0)
    #: Events stored and not yet acknowledged by the broker.
    backlog: int | None = Field(default=None, ge=0)
    #: Events the outbox had to drop (bounded size) since the database was made.
    events_dropped: int | None = Field(default=None, ge=0)
    #: The agent's own MQTT bytes on the LTE link since it started (IP + TCP + TLS + MQTT).
    mqtt_lte_bytes: int | None = Field(default=None, ge=0)
    #: "5" or "3.1.1": the MQTT version the broker accepted.
    mqtt: str | None = None


class TelemetrySample(_Model):
    """One summary of the site; every field but the time is optional (absent = unknown)."""

    wall_time_s: float
    mode: Mode | None = None
    links: dict[Literal["primary", "cellular"], LinkQuality] = Field(default_factory=dict)
    signal: SignalQuality | None = None
    usage: Usage | None = None
    agent: AgentHealth | None = None


class TelemetryPayload(_Payload, TelemetrySample):
    """On `tele` (QoS 0): the latest sample, with the batch's earlier samples, oldest first.

    On LTE the agent sends only samples that differ materially from the last one sent
    (plus an hourly heartbeat), gathered into one message; `dropped` counts samples
    the bounded batch had to leave out since the previous message.
    """

    earlier: list[TelemetrySample] | None = None
    dropped: int | None = Field(default=None, ge=1)


# -- cfg -------------------------------------------------------------------------------


class Thresholds(BaseModel):
    """Settings the fleet may change remotely; absent = leave as configured.

    Bounds are narrower than the config file's (a remote typo must not turn the
    failover off); a test keeps them inside the config's.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    degraded_loss_pct: float | None = Field(default=None, ge=0.5, le=50)
    degraded_rtt_ms: float | None = Field(default=None, ge=50, le=2000)
    degraded_jitter_ms: float | None = Field(default=None, ge=5, le=500)
    degraded_mos: float | None = Field(default=None, ge=2.5, le=4.4)
    #: Percentages of the plan cap at which the meter raises a threshold event.
    usage_thresholds_pct: tuple[float, ...] | None = Field(default=None, min_length=1, max_length=8)

    @field_validator("usage_thresholds_pct")
    @classmethod
    def _increasing(cls, value: tuple[float, ...] | None) -> tuple[float, ...] | None:
        if value is None:
            return value
        if any(not 1 <= p <= 200 for p in value) or list(value) != sorted(set(value)):
            raise ValueError("must be strictly increasing percentages from 1 to 200")
        return value

    def given(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)


class DesiredConfig(_Payload):
    """Retained on `cfg/des` by the fleet: the settings it wants, under a version it raises."""

    version: int = Field(ge=1)
    thresholds: Thresholds = Field(default_factory=Thresholds)


class ReportedConfig(_Payload):
    """Retained on `cfg/rep` by the device: what is in force, and what was refused."""

    #: The last desired version applied (0: none yet).
    version: int = Field(ge=0)
    #: The thresholds in force now (from the config file, cfg/des or set_thresholds).
    thresholds: dict[str, Any] = Field(default_factory=dict)
    wall_time_s: float
    #: Set when the latest cfg/des was not applied, with the reason.
    rejected_version: int | None = None
    error: str | None = Field(default=None, max_length=300)


# -- cmd -------------------------------------------------------------------------------


class CommandName(enum.StrEnum):
    RUN_FAILOVER_TEST = "run_failover_test"
    SET_THRESHOLDS = "set_thresholds"
    RESET_METER = "reset_meter"
    REPLAY_EVENTS = "replay_events"


class CommandStatus(enum.StrEnum):
    ACCEPTED = "accepted"  # valid and taken; a later status follows
    IN_PROGRESS = "in_progress"  # long-running (the failover test) has started
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # valid, but it could not be done (the reason says why)
    REJECTED = "rejected"  # malformed, unknown, expired on arrival, or invalid arguments
    EXPIRED = "expired"  # accepted, but its expiry passed before it could start

    @property
    def final(self) -> bool:
        return self not in (CommandStatus.ACCEPTED, CommandStatus.IN_PROGRESS)


class CommandRequest(_Payload):
    """On `cmd/req` from the fleet; `args` is checked against the command's args model."""

    id: str = Field(pattern=COMMAND_ID_PATTERN)
    name: str = Field(max_length=40)
    args: dict[str, Any] = Field(default_factory=dict)
    #: Unix time after which the command must not start (the device's clock decides).
    expires_wall_s: float


class CommandResult(_Payload):
    """On `cmd/res` from the device: one message per status change of one command."""

    #: Absent only when the request was so malformed that its id could not be read.
    id: str | None = None
    name: str | None = None
    status: CommandStatus
    reason: str | None = Field(default=None, max_length=300)
    result: dict[str, Any] | None = None
    wall_time_s: float


class _Args(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RunFailoverTestArgs(_Args):
    #: How long VoIP stays on LTE during the test.
    duration_s: float = Field(default=60.0, ge=10, le=600)


class SetThresholdsArgs(_Args):
    thresholds: Thresholds

    @field_validator("thresholds")
    @classmethod
    def _not_empty(cls, value: Thresholds) -> Thresholds:
        if not value.given():
            raise ValueError("name at least one threshold")
        return value


class ResetMeterArgs(_Args):
    #: Why (kept in the event log): e.g. "carrier reset the plan on 2025-03-04".
    reason: str = Field(min_length=3, max_length=200)


class ReplayEventsArgs(_Args):
    from_seq: int = Field(ge=1)
    #: If given, must be the device's epoch (a replay for another database is refused).
    epoch: str | None = Field(default=None, pattern=EPOCH_PATTERN)


ARGS: dict[CommandName, type[_Args]] = {
    CommandName.RUN_FAILOVER_TEST: RunFailoverTestArgs,
    CommandName.SET_THRESHOLDS: SetThresholdsArgs,
    CommandName.RESET_METER: ResetMeterArgs,
    CommandName.REPLAY_EVENTS: ReplayEventsArgs,
}


@dataclass(frozen=True)
class CommandCheck:
    """What `check_command` made of a request: runnable (`args` set) or refused (`reason`)."""

    id: str | None
    name: str | None
    status: CommandStatus
    reason: str | None = None
    request: CommandRequest | None = None
    args: _Args | None = None


def _first_error(exc: ValidationError) -> str:
    error = exc.errors()[0]
    where = ".".join(str(p) for p in error.get("loc", ())) or "payload"
    return f"{where}: {error.get('msg', 'is invalid')}"


def check_command(raw: bytes, now_wall_s: float) -> CommandCheck:
    """Validate one `cmd/req` payload: size, JSON, fields, expiry, name, arguments.

    Every refusal is `rejected` with a one-sentence reason; the id is kept whenever it
    can be read, so the fleet can match the rejection to its request.
    """
    if len(raw) > MAX_COMMAND_BYTES:
        return CommandCheck(
            _salvage_id(raw), None, CommandStatus.REJECTED,
            f"command too large ({len(raw)} bytes; at most {MAX_COMMAND_BYTES})",
        )  # fmt: skip
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return CommandCheck(None, None, CommandStatus.REJECTED, "command is not valid JSON")
    if not isinstance(body, dict):
        return CommandCheck(None, None, CommandStatus.REJECTED, "command is not a JSON object")
    cid = body.get("id") if isinstance(body.get("id"), str) else None
    cid = cid if cid is not None and re.match(COMMAND_ID_PATTERN, cid) else None
    name = body.get("name") if isinstance(body.get("name"), str) else None
    try:
        request = CommandRequest.model_validate(body)
    except ValidationError as exc:
        reason = f"malformed command ({_first_error(exc)})"
        return CommandCheck(cid, name, CommandStatus.REJECTED, reason)
    if now_wall_s > request.expires_wall_s:
        ago_s = now_wall_s - request.expires_wall_s
        return CommandCheck(
            request.id, request.name, CommandStatus.REJECTED,
            f"command expired {ago_s:.0f} s ago (by the device's clock)", request,
        )  # fmt: skip
    try:
        command = CommandName(request.name)
    except ValueError:
        known = ", ".join(c.value for c in CommandName)
        return CommandCheck(
            request.id, request.name, CommandStatus.REJECTED,
            f"unknown command {request.name!r} (known: {known})", request,
        )  # fmt: skip
    try:
        args = ARGS[command].model_validate(request.args)
    except ValidationError as exc:
        return CommandCheck(
            request.id, request.name, CommandStatus.REJECTED,
            f"invalid arguments ({_first_error(exc)})", request,
        )  # fmt: skip
    return CommandCheck(request.id, command.value, CommandStatus.ACCEPTED, None, request, args)


def _salvage_id(raw: bytes) -> str | None:
    """The id of an oversized request, if its JSON is readable (so the fleet can match)."""
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    cid = body.get("id") if isinstance(body, dict) else None
    return cid if isinstance(cid, str) and re.match(COMMAND_ID_PATTERN, cid) else None


def check_desired(raw: bytes) -> DesiredConfig:
    """Validate a `cfg/des` payload; raises ContractError with one sentence."""
    if len(raw) > MAX_COMMAND_BYTES:
        raise ContractError(f"desired config too large ({len(raw)} bytes)")
    try:
        return DesiredConfig.model_validate_json(raw)
    except ValidationError as exc:
        if exc.errors()[0].get("type") == "json_invalid":
            raise ContractError("desired config is not valid JSON") from None
        raise ContractError(f"desired config is invalid ({_first_error(exc)})") from None


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


#: Keys `telemetry_sample` takes from the agent; anything else is a caller's mistake.
SAMPLE_KEYS = frozenset({"wall_time_s", "mode", "links", "signal", "usage", "agent"})


def _rounded(figures: Mapping[str, Any], keep: Mapping[str, Any]) -> dict[str, Any]:
    picked = {k: v for k, v in figures.items() if k in keep and v is not None}
    return {k: round(v, 2) if isinstance(v, float) else v for k, v in picked.items()}


def telemetry_sample(*, wall_time_s: float, **parts: Any) -> TelemetrySample:
    """A sample from the agent's figures (status links, modem signal, meter usage, health).

    Lenient on purpose: it picks the contract's fields and leaves the rest (reasons,
    target counts, interface names) behind, so the status figures can be passed as
    they are; floats are rounded to 2 decimals (bytes matter on LTE).
    """
    unknown = set(parts) - SAMPLE_KEYS
    if unknown:
        raise ContractError(f"telemetry has unknown keys: {sorted(unknown)}")
    body: dict[str, Any] = {"wall_time_s": round(wall_time_s, 3), "mode": parts.get("mode")}
    links = parts.get("links") or {}
    body["links"] = {r: _rounded(f, LinkQuality.model_fields) for r, f in links.items()}
    for key, model in (("signal", SignalQuality), ("usage", Usage), ("agent", AgentHealth)):
        if parts.get(key):
            body[key] = _rounded(parts[key], model.model_fields)
    return TelemetrySample.model_validate(body)


def telemetry_message(
    *,
    wall_time_s: float,
    links: Mapping[str, Mapping[str, Any]],
    mode: str | None = None,
    **parts: Any,
) -> TelemetryPayload:
    """One sample as a payload (see `telemetry_sample`)."""
    sample = telemetry_sample(wall_time_s=wall_time_s, links=links, mode=mode, **parts)
    return telemetry_batch([sample])


def telemetry_batch(samples: list[TelemetrySample], dropped: int = 0) -> TelemetryPayload:
    """The newest sample on top, the earlier ones (oldest first) in `earlier`."""
    if not samples:
        raise ContractError("a telemetry message needs at least one sample")
    *earlier, latest = samples
    return TelemetryPayload.model_validate(
        {
            **latest.model_dump(exclude_none=True),
            "earlier": earlier or None,
            "dropped": dropped or None,
        }
    )


def command_result(
    check_or_id: CommandCheck | str | None,
    status: CommandStatus,
    *,
    now_wall_s: float,
    name: str | None = None,
    reason: str | None = None,
    result: Mapping[str, Any] | None = None,
) -> CommandResult:
    if isinstance(check_or_id, CommandCheck):
        cid, name = check_or_id.id, name or check_or_id.name
    else:
        cid = check_or_id
    return CommandResult(
        id=cid,
        name=name if name is None or len(name) <= 40 else name[:40],
        status=status,
        reason=None if reason is None else reason[:300],
        result=dict(result) if result is not None else None,
        wall_time_s=round(now_wall_s, 3),
    )


# -- schemas ---------------------------------------------------------------------------

PAYLOADS: dict[Channel, type[_Payload]] = {
    Channel.STATE: StatePayload,
    Channel.EVT: EventPayload,
    Channel.TELE: TelemetryPayload,
    Channel.CFG_DES: DesiredConfig,
    Channel.CFG_REP: ReportedConfig,
    Channel.CMD_REQ: CommandRequest,
    Channel.CMD_RES: CommandResult,
}


def json_schemas() -> dict[str, dict[str, Any]]:
    """JSON Schema per file name: each channel's payload, and each command's `args`."""
    schemas: dict[str, dict[str, Any]] = {}
    for channel, model in PAYLOADS.items():
        schema = model.model_json_schema()
        schema["title"] = f"{TOPIC_ROOT}/{{device_id}}/{channel.value}: {model.__name__}"
        schemas[channel.value.replace("/", "-")] = schema
    for name, args in ARGS.items():
        schema = args.model_json_schema()
        schema["title"] = f"{Channel.CMD_REQ.value} {name.value}: args"
        schemas[f"cmd-args-{name.value}"] = schema
    return schemas


def schema_files() -> dict[str, str]:
    """`docs/schemas/<name>.json` -> its text, exactly as committed."""
    return {
        f"{name}.json": json.dumps(schema, indent=2, sort_keys=True) + "\n"
        for name, schema in json_schemas().items()
    }
