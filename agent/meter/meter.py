"""The meter service: polls the cellular interface's counters, keeps the plan's books,
raises alerts, and persists, with bounded writes, what a crash must not lose.

    meter = Meter(router, store, clock, settings)
    task = asyncio.create_task(meter.run())     # until cancelled; persists on the way out
    meter.snapshot()                            # for status, `cpe-agent meter`, telemetry
    meter.note_links(mode, primary_healthy)     # from the agent, each second
    meter.note_router_state(router_state)       # blocked, voice and agent bytes, when read
    meter.note_agent_wire_bytes(total)          # the MQTT client's own bytes on LTE so far
    meter.telemetry_minimum                     # True at the cap: cut the agent's own reports

Writes: at most one per `persist_interval_s` while bytes move, and one at once on every
event (an alert, a cycle, a counter reset, a change of source or clock trust, a reset
from the CLI). A crash loses at most the bytes since the last write, and none at all
while the router's counters survive: the next start reconciles from the stored raw
reading, which is written in the same transaction as the totals it produced.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Protocol

from agent.clock import Clock
from agent.domain import Event, EventKind, Mode
from agent.meter import budget, clocktrust, counter, report, split, timesync
from agent.meter.ledger import (
    Count,
    MeterDoc,
    Totals,
    apply,
    compact,
    drop_reported,
    usage_bytes,
)
from agent.meter.ledger import reset as ledger_reset
from agent.meter.persist import MeterDB
from agent.meter.settings import MeterSettings
from agent.store import Store, StoreError
from drivers.errors import DriverError
from drivers.types import Counters, RouterState

if TYPE_CHECKING:
    from agent.config import Settings

log = logging.getLogger(__name__)

#: Time on LTE is summed between polls; a longer gap (a stalled loop, a suspended VM)
#: counts as this many poll intervals at most.
MAX_TIME_STEP_POLLS = 3
#: Counts kept in memory before they are folded (only while the disk refuses writes).
MAX_PENDING_COUNTS = 256
#: The store's recent events searched for outbox events already handed over.
OUTBOX_DEDUPE_WINDOW = 500
#: The high-water mark of trusted wall time is written at least this often while idle.
HIGH_WATER_EVERY_S = 3600.0


class CounterSource(Protocol):
    async def interface_counters(self, interface: str) -> Counters: ...


class Meter:
    def __init__(
        self,
        router: CounterSource,
        store: Store,
        clock: Clock,
        settings: MeterSettings | Settings,
        *,
        wall_synced: Callable[[], bool | None] = timesync.kernel_clock_synchronized,
        host_boot_id: Callable[[], str | None] = timesync.host_boot_id,
        on_telemetry_minimum: Callable[[bool], None] | None = None,
        wall_source: Callable[[], float] | None = None,
        db: MeterDB | None = None,
    ) -> None:
        """`wall_synced`: is the wall clock synchronised (None: cannot tell).
        `wall_source`: the best wall time when it is not the system clock's (the modem's
        network time while the system clock cannot be set); the clock's wall otherwise.
        """
        if not isinstance(settings, MeterSettings):
            settings = MeterSettings.from_settings(settings)
        self.settings = settings
        self.rules = settings.rules
        self.router = router
        self.store = store
        self.clock = clock
        self._wall_synced = wall_synced
        self._wall = wall_source or clock.wall
        self._host_boot_id_fn = host_boot_id
        self.on_telemetry_minimum = on_telemetry_minimum
        self._db = db
        self._started = False
        self._doc = MeterDoc()  # as last written (or read)
        self._pending: list[Count] = []
        self._reading: counter.Reading | None = None
        self._trust = clocktrust.TrustState()
        self._decision: clocktrust.Decision | None = None
        self._host_boot_id: str | None = None
        self._last_persist_mono: float | None = None
        self._last_poll_mono: float | None = None
        self._urgent = False
        self._reported: set[int] = set()
        self._view_cache: MeterDoc | None = None
        self._mode: Mode | None = None
        self._primary_healthy: bool | None = None
        self._blocked = split.Tracker()
        self._voice = split.Tracker()
        self._agent = split.Tracker()
        self._mqtt = split.Tracker()
        self._blocked_pending = 0
        self._voice_pending = 0
        self._agent_pending = 0
        self._mqtt_pending = 0
        self._telemetry_minimum = False
        self.persist_error: str | None = None
        self.source_error: str | None = None
        self.writes = 0

    # --- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        """Read the stored document and hand over events a crash left in its outbox.

        The first poll after this reconciles against the router's counters. Raises
        StoreError when the stored state cannot be read (`run` retries).
        """
        if self._started:
            return
        if self._db is None:
            self._db = MeterDB(self.store.path)
        self._host_boot_id = self._host_boot_id_fn()
        try:
            self._doc = self._db.load()
        except StoreError:
            self.close()
            raise
        # Counts not written before a close are dropped: they are counted again from the
        # stored reading (the router's counters still hold them).
        self._pending = []
        self._reading = self._doc.reading
        self._trust = self._doc.trust
        self._reported = self._already_in_store(self._doc)
        self._hand_over()
        self._urgent = True  # persist the reconciliation at once
        self._started = True
        self._update_telemetry_flag()

    async def run(self) -> None:
        """Poll until cancelled; what was counted is written on the way out.

        Never raises but for cancellation: the meter must not take failover down. While
        its state cannot be read it does not count (the router's counters keep the
        bytes; the first successful start reconciles them).
        """
        try:
            while True:
                try:
                    self.start()
                    await self.poll_once()
                except StoreError as exc:
                    if self.persist_error != str(exc):
                        log.error("%s", exc)
                    self.persist_error = str(exc)
                    await self.clock.sleep(self.settings.persist_interval_s)
                    continue
                except Exception:
                    log.exception("meter poll failed; counting goes on at the next poll")
                await self.clock.sleep(self.settings.poll_interval_s)
        finally:
            self.flush()
            self.close()

    def close(self) -> None:
        if self._db is not None:
            with contextlib.suppress(Exception):
                self._db.close()
            self._db = None
            self._started = False

    # --- inputs from the agent -----------------------------------------------------------------

    def note_links(self, mode: Mode | str, primary_healthy: bool) -> None:
        """The failover mode and whether the primary is healthy now (call it each second)."""
        self._mode = Mode(mode)
        self._primary_healthy = primary_healthy

    def note_router_state(self, state: RouterState) -> None:
        """The router's running totals: the guard's blocked bytes, and VoIP and the
        agent's own bytes on LTE where the driver can tell them apart (None: it cannot).
        Each restarts with the router (or a re-created table): a smaller total is all new.
        """
        self._blocked, moved = split.advance(self._blocked, state.blocked_bytes)
        self._blocked_pending += moved
        self._voice, moved = split.advance(self._voice, state.voice_bytes)
        self._voice_pending += moved
        self._agent, moved = split.advance(self._agent, state.agent_bytes)
        self._agent_pending += moved

    def note_agent_wire_bytes(self, total_lte_wire_bytes: int) -> None:
        """The MQTT client's own bytes on LTE since it started (IP+TCP+TLS+MQTT).

        The client starts at zero with the agent, so the first total counts in full; a
        smaller total (a new client) is all new."""
        self._mqtt, moved = split.advance(self._mqtt, total_lte_wire_bytes, from_zero=True)
        self._mqtt_pending += moved

    # --- polling ------------------------------------------------------------------------------

    async def poll_once(self) -> None:
        self.start()
        current: counter.Reading | None = None
        try:
            raw = await self.router.interface_counters(self.settings.interface)
            current = counter.Reading(
                source=f"{self.settings.driver}:{raw.interface}",
                boot_id=raw.boot_id,
                width_bits=raw.width_bits,
                counts_frames=raw.counts_frames,
                rx_bytes=raw.rx_bytes,
                tx_bytes=raw.tx_bytes,
                rx_packets=raw.rx_packets,
                tx_packets=raw.tx_packets,
            )
            if self.source_error is not None:
                log.info("the meter reads %s again", self.settings.interface)
            self.source_error = None
        except DriverError as exc:
            if str(exc) != self.source_error:
                log.warning("the meter cannot read %s: %s", self.settings.interface, exc)
            self.source_error = str(exc)
        mono = self.clock.monotonic()
        wall = self._wall()
        self._count(current, mono, wall)
        if self._external_change():
            self._urgent = True
        if self._urgent or self._persist_due(mono):
            self.persist()
        elif any(e.id not in self._reported for e in self._doc.outbox):
            self._hand_over()  # the store refused them last time
        self._update_telemetry_flag()

    def _count(self, current: counter.Reading | None, mono: float, wall: float) -> None:
        was_trusted = self._decision.trusted if self._decision is not None else None
        obs = clocktrust.Observation(self._host_boot_id, mono, wall, self._synced())
        self._trust, decision = clocktrust.observe(self._trust, obs)
        self._decision = decision
        if was_trusted is not decision.trusted:
            level = logging.INFO if decision.trusted else logging.WARNING
            log.log(level, "meter clock %s: %s", "trusted" if decision.trusted else
                    "NOT trusted, holding bytes", decision.reason)
            self._urgent = True
        rx_ip = tx_ip = rx_pk = tx_pk = 0
        if current is not None:
            delta = counter.delta(self._reading, current)
            self._log_delta(delta, current)
            rx_ip, tx_ip = counter.ip_bytes(
                delta.rx_bytes, delta.tx_bytes, delta.rx_packets, delta.tx_packets,
                counts_frames=current.counts_frames,
                frame_overhead_bytes=self.settings.frame_overhead_bytes,
            )
            rx_pk, tx_pk = delta.rx_packets, delta.tx_packets
            self._reading = current
        self._view_cache = None
        step = 0.0
        if self._last_poll_mono is not None:
            step = min(max(0.0, mono - self._last_poll_mono),
                       MAX_TIME_STEP_POLLS * self.settings.poll_interval_s)
        self._last_poll_mono = mono
        on_lte = self._mode is not None and self._mode.voip_on_cellular
        totals = Totals(
            rx_ip_bytes=rx_ip,
            tx_ip_bytes=tx_ip,
            rx_packets=rx_pk,
            tx_packets=tx_pk,
            idle_ip_bytes=rx_ip + tx_ip if self._mode is not None and not on_lte else 0,
            blocked_bytes=self._blocked_pending,
            voice_bytes=self._voice_pending,
            agent_bytes=self._agent_pending,
            agent_mqtt_bytes=self._mqtt_pending,
            lte_s=step if on_lte else 0.0,
            lte_primary_healthy_s=step
            if on_lte and self._primary_healthy and self._mode is Mode.CELLULAR
            else 0.0,
        )
        self._blocked_pending = self._voice_pending = self._agent_pending = 0
        self._mqtt_pending = 0
        if totals.empty:
            return
        self._pending.append(
            Count(
                totals=totals,
                monotonic_s=mono,
                host_boot_id=self._host_boot_id,
                wall_s=decision.wall_s if decision.trusted else None,
                anchor=self._trust.anchor,
            )
        )
        if len(self._pending) > MAX_PENDING_COUNTS:
            self._pending = compact(self._pending, self.rules)
        if self._view().next_event_id > self._doc.next_event_id:
            self._urgent = True  # an alert is due: write it now

    def _log_delta(self, delta: counter.Delta, current: counter.Reading) -> None:
        kind = delta.kind
        if kind is counter.DeltaKind.BASELINE:
            log.info("meter: first reading of %s; counting from here", current.source)
        elif kind is counter.DeltaKind.SOURCE_CHANGED:
            before = self._reading.source if self._reading else "?"
            log.warning("meter: the counters' source changed (%s -> %s); new baseline",
                        before, current.source)
        elif kind is counter.DeltaKind.RESET:
            log.info("meter: %s's counters restarted (boot id %s); %d bytes since counted",
                     current.source, current.boot_id, delta.rx_bytes + delta.tx_bytes)
        elif kind is counter.DeltaKind.WRAP:
            log.debug("meter: a 32-bit counter of %s wrapped", current.source)
        if kind is not counter.DeltaKind.STEADY and kind is not counter.DeltaKind.WRAP:
            self._urgent = True  # a new baseline must be on disk before more is counted

    def _synced(self) -> bool | None:
        try:
            return self._wall_synced()
        except Exception:  # a probe of the OS must never stop the counting
            log.debug("clock sync probe failed", exc_info=True)
            return None

    def _external_change(self) -> bool:
        """Did someone else (the CLI's reset) write since we did? A cheap read per poll."""
        if self._db is None:
            return False
        try:
            return self._db.revision() != self._doc.revision
        except StoreError:
            return False

    def _persist_due(self, mono: float) -> bool:
        """Bytes moved (or the idle high-water mark aged) and the interval has passed."""
        high_water_aged = (
            self._trust.high_water_wall_s - self._doc.trust.high_water_wall_s
            >= HIGH_WATER_EVERY_S
        )
        if not (self._pending or self._reading != self._doc.reading or high_water_aged):
            return False
        last = self._last_persist_mono
        return last is None or mono - last >= self.settings.persist_interval_s

    def reset(self, reason: str, *, by: str = "fleet") -> dict[str, Any]:
        """Reset the current cycle's count (the fleet's `reset_meter` command).

        What was counted so far is written first, so it is part of what the reset
        clears. Returns the reset event's figures; ValueError (one sentence) when it
        cannot be done.
        """
        reason = " ".join(reason.split())
        if not reason:
            raise ValueError("a reset needs a reason")
        try:
            self.start()
            self.persist()
            assert self._db is not None
            wall = self._now_wall()
            doc = self._db.transact(lambda d: ledger_reset(d, reason, wall, self.rules, by=by))
        except StoreError as exc:
            raise ValueError(str(exc)) from exc
        self._doc = doc
        self._view_cache = None
        self._hand_over()
        self._update_telemetry_flag()
        return dict(doc.outbox[-1].data)

    # --- writing ---------------------------------------------------------------------------------

    def flush(self) -> bool:
        """Write now whatever is pending (shutdown)."""
        if self._db is None:
            return False
        if not (self._pending or self._reading != self._doc.reading or self._reported):
            return True
        return self.persist()

    def persist(self) -> bool:
        """One transaction: stored document + what was counted since. False when the disk
        refused (then nothing is lost: the counts stay in memory and are written later)."""
        if self._db is None:
            return False
        pending = list(self._pending)
        reading, trust = self._reading, self._trust
        reported = set(self._reported)
        now = self._now_wall()

        def merge(stored: MeterDoc) -> MeterDoc:
            doc = drop_reported(stored, reported)
            doc = replace(doc, reading=reading, trust=trust)
            return apply(doc, pending, self.rules, now)

        try:
            doc = self._db.transact(merge)
        except StoreError as exc:
            if self.persist_error != str(exc):
                log.error("%s", exc)
            self.persist_error = str(exc)
            self._last_persist_mono = self.clock.monotonic()  # retry after an interval
            return False
        if self.persist_error is not None:
            log.info("the meter's state is written again")
        self.persist_error = None
        self.writes += 1
        del self._pending[: len(pending)]
        self._doc = doc
        self._reported &= {e.id for e in doc.outbox}
        self._view_cache = None
        self._urgent = False
        self._last_persist_mono = self.clock.monotonic()
        self._hand_over()
        return True

    def _hand_over(self) -> None:
        """Give the outbox's events to the store (the MQTT outbox); at least once, and
        once in practice: an event is dropped from the document in the next write."""
        for out in self._doc.outbox:
            if out.id in self._reported:
                continue
            try:
                kind = EventKind(out.kind)
            except ValueError:
                log.error("meter event of unknown kind %r dropped", out.kind)
                self._reported.add(out.id)
                continue
            try:
                self.store.append_event(Event(kind, out.wall_time_s, out.data))
            except StoreError as exc:
                log.error("%s", exc)
                return
            self._reported.add(out.id)
            if out.kind == "meter_reset":
                log.warning("meter reset: %s", out.data.get("reason"))
            else:
                log.info("meter event %s: %s", out.kind, _brief(out.data))

    def _already_in_store(self, doc: MeterDoc) -> set[int]:
        if not doc.outbox:
            return set()
        wanted = {(e.id, e.kind) for e in doc.outbox}
        found: set[int] = set()
        for stored in self.store.recent_events(OUTBOX_DEDUPE_WINDOW):
            event_id = stored.event.data.get("meter_event_id")
            if isinstance(event_id, int) and (event_id, stored.event.kind.value) in wanted:
                found.add(event_id)
        return found

    # --- reading -----------------------------------------------------------------------------

    def _now_wall(self) -> float:
        decision = self._decision
        if decision is not None and decision.trusted and decision.wall_s is not None:
            # The trusted time of the last poll, moved on by monotonic time since.
            anchor = self._trust.anchor
            if anchor is not None:
                return anchor.project(self.clock.monotonic())
            return decision.wall_s
        return self._wall()

    def _view(self) -> MeterDoc:
        """The stored document with what is pending: what a write now would store."""
        if self._view_cache is None:
            doc = replace(drop_reported(self._doc, self._reported), reading=self._reading)
            self._view_cache = apply(doc, self._pending, self.rules, self._now_wall())
        return self._view_cache

    def snapshot(self) -> dict[str, Any]:
        decision = self._decision
        trusted = decision.trusted if decision is not None else False
        reason = decision.reason if decision is not None else "no reading yet"
        snap = report.snapshot(
            self._view(), self.rules, self._now_wall(),
            clock_trusted=trusted, clock_reason=reason,
            # Told by this process's sources; None: judged from the stored totals.
            voice_known=self._voice.known or None,
            agent_known=self._agent.known or None,
            mqtt_known=self._mqtt.known or None,
        )
        snap["interface"] = self.settings.interface
        snap["persist_error"] = self.persist_error
        snap["source_error"] = self.source_error
        snap["telemetry_minimum"] = self._telemetry_minimum
        snap["written_wall_s"] = self._wall()
        return snap

    def telemetry(self) -> dict[str, Any]:
        """The compact figures for the periodic telemetry message."""
        return report.telemetry_figures(self.snapshot())

    @property
    def telemetry_minimum(self) -> bool:
        """True at the cap: the agent cuts its own reporting to the minimum. Voice, and
        911, are never touched by the meter."""
        return self._telemetry_minimum

    def _update_telemetry_flag(self) -> None:
        value = budget.telemetry_minimum(usage_bytes(self._view(), self.rules), self.rules.plan)
        if value is self._telemetry_minimum:
            return
        self._telemetry_minimum = value
        log.warning("meter: agent telemetry %s", "cut to the minimum (at the cap)" if value
                    else "back to normal")
        if self.on_telemetry_minimum is not None:
            try:
                self.on_telemetry_minimum(value)
            except Exception:
                log.exception("the telemetry-minimum callback failed")


def _brief(data: dict[str, Any]) -> str:
    keys = ("threshold_pct", "overage_gb", "finding", "percent", "used_bytes", "cycle_start")
    return ", ".join(f"{k}={data[k]}" for k in keys if k in data)
