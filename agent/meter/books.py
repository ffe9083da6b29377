"""The meter's books: the persisted document and the values it is made of. Pure.

The document (`MeterDoc`) is everything the meter must not lose: the last raw reading
it accounted for, the current cycle's totals and the alerts already raised, bytes held
while the clock was untrusted, the clock-trust state, and events not yet handed to the
store. It is stored as one JSON row (agent/meter/persist.py); agent/meter/ledger.py
says how it changes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from agent.meter import budget
from agent.meter.clocktrust import Anchor, TrustState
from agent.meter.counter import Reading
from agent.meter.cycle import Cycle, cycle_at, cycle_from

DOC_VERSION = 1


@dataclass(frozen=True)
class Totals:
    """What one cycle (or one poll, or one held bucket) used. IP bytes: frame headers
    already removed."""

    rx_ip_bytes: int = 0
    tx_ip_bytes: int = 0
    rx_packets: int = 0
    tx_packets: int = 0
    #: IP bytes while VoIP was on the primary (the agent's probes; anything else is misuse).
    idle_ip_bytes: int = 0
    #: Non-VoIP bytes the router's guard stopped before LTE (never billed).
    blocked_bytes: int = 0
    #: Seconds VoIP was on LTE, and of those, while the primary was healthy (outside
    #: the failback dwell and the installer's test).
    lte_s: float = 0.0
    lte_primary_healthy_s: float = 0.0
    #: IP bytes of VoIP and of the agent's own traffic on LTE, both ways, as the router
    #: counted them (0 when the driver cannot tell them apart; report.py says None then).
    voice_bytes: int = 0
    agent_bytes: int = 0
    #: The agent's own MQTT bytes on LTE as its client counted them (IP+TCP+TLS+MQTT).
    agent_mqtt_bytes: int = 0

    @property
    def ip_bytes(self) -> int:
        return self.rx_ip_bytes + self.tx_ip_bytes

    def __add__(self, other: Totals) -> Totals:
        return Totals(
            *(getattr(self, f.name) + getattr(other, f.name) for f in dataclasses.fields(self))
        )

    @property
    def empty(self) -> bool:
        return self == Totals()

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> Totals:
        data = data or {}
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            if f.name in data:
                values[f.name] = float(data[f.name]) if f.type == "float" else int(data[f.name])
        return cls(**values)


@dataclass(frozen=True)
class Count:
    """What one poll counted, and when it belongs."""

    totals: Totals
    monotonic_s: float
    host_boot_id: str | None
    #: The trusted wall time to attribute it to; None while the clock is untrusted.
    wall_s: float | None
    #: The clock-trust anchor at this moment (gives held bytes of this boot their time).
    anchor: Anchor | None = None


@dataclass(frozen=True)
class HeldBucket:
    """Bytes counted while wall time was untrusted, with the monotonic times they were
    counted between (None when they came from a boot whose monotonic time is lost).
    They are given the time of the last: never earlier than they really were."""

    host_boot_id: str | None
    first_monotonic_s: float | None
    last_monotonic_s: float | None
    totals: Totals

    @property
    def timed(self) -> bool:
        return self.first_monotonic_s is not None and self.last_monotonic_s is not None

    def to_json(self) -> dict[str, Any]:
        return {
            "host_boot_id": self.host_boot_id,
            "first_monotonic_s": self.first_monotonic_s,
            "last_monotonic_s": self.last_monotonic_s,
            "totals": self.totals.to_json(),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> HeldBucket:
        first, last = data.get("first_monotonic_s"), data.get("last_monotonic_s")
        return cls(
            host_boot_id=data.get("host_boot_id"),
            first_monotonic_s=None if first is None else float(first),
            last_monotonic_s=None if last is None else float(last),
            totals=Totals.from_json(data.get("totals")),
        )


@dataclass(frozen=True)
class CycleRecord:
    start_wall_s: float
    totals: Totals = Totals()
    #: Alert and finding keys already raised this cycle ("pct:50", "overage:1", "use:...").
    alerts: tuple[str, ...] = ()
    #: (wall_s, IP bytes so far), oldest first: the history the projection's rate uses.
    samples: tuple[tuple[float, int], ...] = ()
    resets: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "start_wall_s": self.start_wall_s,
            "totals": self.totals.to_json(),
            "alerts": list(self.alerts),
            "samples": [list(s) for s in self.samples],
            "resets": self.resets,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CycleRecord:
        return cls(
            start_wall_s=float(data["start_wall_s"]),
            totals=Totals.from_json(data.get("totals")),
            alerts=tuple(str(a) for a in data.get("alerts", ())),
            samples=tuple((float(w), int(b)) for w, b in data.get("samples", ())),
            resets=int(data.get("resets", 0)),
        )


@dataclass(frozen=True)
class OutEvent:
    id: int
    kind: str
    wall_time_s: float
    data: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "wall_time_s": self.wall_time_s,
                "data": self.data}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> OutEvent:
        return cls(int(data["id"]), str(data["kind"]), float(data["wall_time_s"]),
                   dict(data["data"]))


@dataclass(frozen=True)
class MeterRules:
    """The plan and limits the ledger applies (built from the settings)."""

    plan: budget.Plan
    start_day: int = 1
    timezone: str = "UTC"
    limits: budget.PrimaryUseLimits = field(default_factory=budget.PrimaryUseLimits)
    codec: str = "g711"
    ptime_ms: float = 20.0
    #: A projection sample every this many seconds of wall time ...
    sample_every_s: float = 6 * 3600.0
    #: ... and the rate is taken over this much recent history.
    projection_window_s: float = 7 * 86400.0

    def cycle_at(self, wall_s: float) -> Cycle:
        return cycle_at(wall_s, self.start_day, self.timezone)

    def cycle_from(self, start_wall_s: float) -> Cycle:
        return cycle_from(start_wall_s, self.start_day, self.timezone)


@dataclass(frozen=True)
class MeterDoc:
    revision: int = 0
    reading: Reading | None = None
    trust: TrustState = field(default_factory=TrustState)
    cycle: CycleRecord | None = None
    held: tuple[HeldBucket, ...] = ()
    outbox: tuple[OutEvent, ...] = ()
    next_event_id: int = 1
    #: Summaries of the last completed cycles, newest last.
    history: tuple[dict[str, Any], ...] = field(default=())

    @property
    def held_totals(self) -> Totals:
        total = Totals()
        for bucket in self.held:
            total = total + bucket.totals
        return total

    def to_json(self) -> dict[str, Any]:
        return {
            "version": DOC_VERSION,
            "revision": self.revision,
            "reading": None if self.reading is None else self.reading.to_json(),
            "trust": self.trust.to_json(),
            "cycle": None if self.cycle is None else self.cycle.to_json(),
            "held": [b.to_json() for b in self.held],
            "outbox": [e.to_json() for e in self.outbox],
            "next_event_id": self.next_event_id,
            "history": list(self.history),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> MeterDoc:
        if not data:
            return cls()
        if int(data.get("version", DOC_VERSION)) > DOC_VERSION:
            raise ValueError(
                f"the meter state was written by a newer agent (version {data['version']})"
            )
        reading = data.get("reading")
        cycle = data.get("cycle")
        return cls(
            revision=int(data.get("revision", 0)),
            reading=None if not reading else Reading.from_json(reading),
            trust=TrustState.from_json(data.get("trust")),
            cycle=None if not cycle else CycleRecord.from_json(cycle),
            held=tuple(HeldBucket.from_json(b) for b in data.get("held", ())),
            outbox=tuple(OutEvent.from_json(e) for e in data.get("outbox", ())),
            next_event_id=int(data.get("next_event_id", 1)),
            history=tuple(dict(h) for h in data.get("history", ())),
        )
