"""The meter service with an injected clock and a fake counter source: bounded writes,
reconciliation on start, alerts as events, the CLI's reset while running, a full disk,
link time, and the telemetry-minimum flag."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from dataclasses import replace
from pathlib import Path

import pytest

from agent.clock import ManualClock
from agent.domain import EventKind, Mode
from agent.meter.admin import read_books, reset_books
from agent.meter.budget import Plan
from agent.meter.ledger import MeterDoc, MeterRules, OutEvent
from agent.meter.meter import Meter
from agent.meter.persist import MeterDB
from agent.meter.settings import MeterSettings
from agent.store import Store, StoreError
from drivers.errors import RetryableError
from drivers.types import Counters, RouterState

MB = 1_000_000
WALL = 1_750_000_000.0  # 2025-06-15, mid-cycle
RULES = MeterRules(plan=Plan(cap_bytes=100 * MB), timezone="UTC")
SETTINGS = MeterSettings(interface="lte0", rules=RULES, poll_interval_s=5.0,
                         persist_interval_s=60.0)


class FakeCounters:
    """Counters of one interface that the test moves; a reboot restarts them."""

    def __init__(self, *, frames: bool = False) -> None:
        self.rx = self.tx = self.rxp = self.txp = 0
        self.boot = "router-boot-1"
        self.frames = frames
        self.fail: str | None = None

    def add(self, rx: int, tx: int = 0, packets: int = 0) -> None:
        self.rx += rx
        self.tx += tx
        self.rxp += packets
        self.txp += packets

    def reboot(self) -> None:
        self.rx = self.tx = self.rxp = self.txp = 0
        self.boot += "+"

    async def interface_counters(self, interface: str) -> Counters:
        if self.fail:
            raise RetryableError(self.fail)
        return Counters(interface, self.rx, self.tx, self.rxp, self.txp, self.boot,
                        counts_frames=self.frames)


class Harness:
    def __init__(self, tmp_path: Path, settings: MeterSettings = SETTINGS) -> None:
        self.path = tmp_path / "agent.db"
        self.store = Store(self.path)
        self.clock = ManualClock(monotonic_s=100.0, wall_s=WALL)
        self.counters = FakeCounters()
        self.settings = settings
        self.minimum: list[bool] = []
        self.meter = self.new_meter()

    def new_meter(self, db: MeterDB | None = None) -> Meter:
        return Meter(self.counters, self.store, self.clock, self.settings,
                     wall_synced=lambda: None, host_boot_id=lambda: "host-boot-1",
                     on_telemetry_minimum=self.minimum.append, db=db)

    async def poll(self, seconds: float = 5.0) -> None:
        self.clock.advance(seconds)
        await self.meter.poll_once()

    def stored(self) -> MeterDoc:
        doc = read_books(self.path)
        assert doc is not None
        return doc

    def events(self, kind: EventKind) -> list[dict]:
        return [s.event.data for s in self.store.events() if s.event.kind is kind]


def stored_ip(doc: MeterDoc) -> int:
    return (doc.cycle.totals.ip_bytes if doc.cycle else 0) + doc.held_totals.ip_bytes


async def test_first_reading_is_a_baseline_and_writes_are_batched(tmp_path):
    h = Harness(tmp_path)
    h.counters.add(rx=7 * MB, tx=MB)  # the device's history before the agent
    await h.meter.poll_once()
    assert h.meter.writes == 1  # the baseline is written at once
    for _ in range(24):  # two minutes of traffic, polled every 5 s
        h.counters.add(rx=1000, tx=500)
        await h.poll()
    assert h.meter.snapshot()["ip_bytes"] == 24 * 1500
    assert h.meter.writes == 3  # one per 60 s (at 60 s and 120 s), not one per poll
    for _ in range(30):  # idle: nothing moves, nothing is written
        await h.poll()
    assert h.meter.writes == 3
    assert stored_ip(h.stored()) == 24 * 1500


async def test_restart_reconciles_from_the_routers_counters_losing_nothing(tmp_path):
    h = Harness(tmp_path)
    await h.meter.poll_once()
    for _ in range(5):
        h.counters.add(rx=10_000)
        await h.poll()
    # A crash: the meter is dropped without writing what it counted since its last write.
    h.counters.add(rx=77_777)  # traffic while the agent is down
    h.meter = h.new_meter()
    await h.poll()
    assert stored_ip(h.stored()) == 5 * 10_000 + 77_777


async def test_router_reboot_while_agent_is_down_counts_bytes_since_the_reboot(tmp_path):
    h = Harness(tmp_path)
    await h.meter.poll_once()
    h.counters.add(rx=50_000)
    await h.poll()
    h.meter.flush()
    h.counters.add(rx=3_000)  # counted by the router, then lost in its reboot
    h.counters.reboot()
    h.counters.add(rx=900)
    h.meter = h.new_meter()
    await h.poll()
    # The only loss is the router's own: what it counted after the last write.
    assert stored_ip(h.stored()) == 50_000 + 900


async def test_frame_headers_are_removed_per_packet(tmp_path):
    h = Harness(tmp_path)
    h.counters.frames = True
    await h.meter.poll_once()
    h.counters.add(rx=5 * 1042, tx=5 * 1042, packets=5)  # 5 UDP datagrams of 1000 B
    await h.poll()
    snap = h.meter.snapshot()
    assert (snap["rx_ip_bytes"], snap["tx_ip_bytes"]) == (5 * 1028, 5 * 1028)


async def test_alerts_are_written_and_reported_at_once(tmp_path):
    h = Harness(tmp_path)
    await h.meter.poll_once()
    writes = h.meter.writes
    h.counters.add(rx=50 * MB)
    await h.poll()
    assert h.meter.writes == writes + 1  # not 60 s later
    [event] = h.events(EventKind.METER_THRESHOLD)
    assert event["threshold_pct"] == 50.0
    assert h.stored().outbox != ()  # in the document until the next write drops it
    h.counters.add(rx=1)
    await h.poll(60)
    assert h.stored().outbox == ()
    assert len(h.events(EventKind.METER_THRESHOLD)) == 1


async def test_events_left_in_the_outbox_by_a_crash_are_reported_once(tmp_path):
    h = Harness(tmp_path)
    await h.meter.poll_once()
    h.counters.add(rx=50 * MB)
    await h.poll()
    assert len(h.events(EventKind.METER_THRESHOLD)) == 1
    # Crash after the store took the event, before the document dropped it.
    h.meter = h.new_meter()
    await h.poll()
    assert len(h.events(EventKind.METER_THRESHOLD)) == 1
    # A crash before the store took it: the next start reports it.
    db = MeterDB(h.path)
    db.transact(lambda d: replace(d, outbox=(*d.outbox, OutEvent(
        d.next_event_id, "meter_overage", WALL, {"meter_event_id": d.next_event_id})),
        next_event_id=d.next_event_id + 1))
    db.close()
    h.meter = h.new_meter()
    await h.poll()
    assert len(h.events(EventKind.METER_OVERAGE)) == 1


async def test_at_the_cap_only_the_agents_own_telemetry_is_cut(tmp_path):
    h = Harness(tmp_path)
    await h.meter.poll_once()
    h.counters.add(rx=99 * MB)
    await h.poll()
    assert not h.meter.telemetry_minimum and h.minimum == []
    h.counters.add(rx=2 * MB)
    await h.poll()
    assert h.meter.telemetry_minimum and h.minimum == [True]
    assert h.meter.snapshot()["telemetry_minimum"] is True
    [over] = h.events(EventKind.METER_OVERAGE)
    assert over["overage_gb"] == 1 and over["telemetry_minimum"] is True


async def test_reset_from_the_cli_while_running_survives_the_meters_next_write(tmp_path):
    h = Harness(tmp_path)
    await h.meter.poll_once()
    h.counters.add(rx=60 * MB)
    await h.poll()
    h.counters.add(rx=1234)
    await h.poll()  # pending in the meter's memory, not yet written
    reset_books(h.path, "SIM swapped", WALL + 10, RULES)
    h.counters.add(rx=1000)
    await h.poll()  # the meter notices the new revision and writes at once
    doc = h.stored()
    assert doc.cycle is not None and doc.cycle.resets == 1
    # The reset is not undone; what the meter held in memory lands after it.
    assert stored_ip(doc) == 1234 + 1000
    [event] = h.events(EventKind.METER_RESET)
    assert event["reason"] == "SIM swapped" and event["ip_bytes_before"] == 60 * MB
    # Alerts start over after a reset.
    h.counters.add(rx=50 * MB)
    await h.poll()
    assert len(h.events(EventKind.METER_THRESHOLD)) == 2


async def test_reset_with_the_agent_stopped_is_reported_at_the_next_start(tmp_path):
    h = Harness(tmp_path)
    await h.meter.poll_once()
    h.counters.add(rx=5 * MB)
    await h.poll()
    h.meter.flush()
    reset_books(h.path, "installer test traffic", WALL + 60, RULES)
    assert h.events(EventKind.METER_RESET) == []
    h.meter = h.new_meter()
    await h.poll()
    assert [e["reason"] for e in h.events(EventKind.METER_RESET)] == ["installer test traffic"]


class FullDisk(MeterDB):
    full = False

    def transact(self, change):  # type: ignore[no-untyped-def]
        if self.full:
            raise self._error("write", sqlite3.OperationalError("database or disk is full"))
        return super().transact(change)


async def test_a_full_disk_is_one_clear_error_and_loses_nothing(tmp_path, caplog):
    h = Harness(tmp_path)
    db = FullDisk(h.path)
    h.meter = h.new_meter(db)
    await h.meter.poll_once()
    db.full = True
    for _ in range(40):
        h.counters.add(rx=1000)
        await h.poll(30)
    snap = h.meter.snapshot()
    assert snap["ip_bytes"] == 40_000  # counted in memory
    assert "database or disk is full" in snap["persist_error"]
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "free disk space" in errors[0].getMessage()
    db.full = False
    await h.poll(60)
    assert stored_ip(h.stored()) == 40_000 and h.meter.snapshot()["persist_error"] is None


def test_a_real_sqlite_full_error_becomes_a_store_error(tmp_path):
    db = MeterDB(tmp_path / "agent.db")
    db.transact(lambda d: d)
    pages = db._db.execute("PRAGMA page_count").fetchone()[0]
    db._db.execute(f"PRAGMA max_page_count = {pages}")
    huge = tuple({"note": "x" * 5000, "i": i} for i in range(20))
    with pytest.raises(StoreError, match="free disk space"):
        db.transact(lambda d: replace(d, history=huge))
    assert db.load().history == ()  # nothing half-written
    db.close()


async def test_an_unreadable_interface_is_retried_and_loses_nothing(tmp_path):
    h = Harness(tmp_path)
    await h.meter.poll_once()
    h.counters.fail = "Interface lte0 does not exist"
    h.counters.add(rx=4000)
    await h.poll()
    assert h.meter.snapshot()["source_error"] == "Interface lte0 does not exist"
    h.counters.fail = None
    await h.poll()
    assert h.meter.snapshot()["ip_bytes"] == 4000
    assert h.meter.snapshot()["source_error"] is None


async def test_lte_time_and_primary_healthy_time_and_blocked_bytes(tmp_path):
    h = Harness(tmp_path)
    await h.meter.poll_once()
    h.meter.note_links(Mode.CELLULAR, primary_healthy=False)
    for _ in range(12):  # one minute of failover
        await h.poll()
    h.meter.note_links(Mode.RECOVERING, primary_healthy=True)  # the dwell: allowed
    for _ in range(12):
        await h.poll()
    h.meter.note_links(Mode.CELLULAR, primary_healthy=True)  # must not happen
    for _ in range(6):
        await h.poll()
    h.meter.note_links(Mode.PRIMARY, primary_healthy=True)
    h.counters.add(rx=3000)
    await h.poll()
    h.meter.note_router_state(RouterState(True, None, blocked_packets=1, blocked_bytes=500))
    h.meter.note_router_state(RouterState(True, None, blocked_packets=4, blocked_bytes=2100))
    await h.poll()
    snap = h.meter.snapshot()
    assert snap["lte_hours"] == round(150 / 3600, 3)
    assert snap["lte_primary_healthy_hours"] == round(30 / 3600, 3)
    assert snap["split"]["idle_ip_bytes"] == 3000
    assert snap["split"]["blocked_bytes"] == 1600
    assert snap["split"]["voice_bytes"] is None  # unknown, never 0


async def until(condition, what: str) -> None:
    """Let the loop run until `condition()` holds (bounded: no sleeping, no hoping)."""
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError(f"never happened: {what}")


async def test_run_persists_on_cancel(tmp_path):
    h = Harness(tmp_path)
    task = asyncio.create_task(h.meter.run())
    await until(lambda: h.meter.writes == 1, "the start's write")
    h.counters.add(rx=4321)
    h.clock.advance(5)  # wakes the meter's sleep: it polls
    await until(lambda: h.meter.snapshot()["ip_bytes"] == 4321, "the poll")
    assert h.meter.writes == 1  # counted, not yet written (the interval is 60 s)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert stored_ip(h.stored()) == 4321


def test_snapshot_without_any_reading_is_honest(tmp_path):
    h = Harness(tmp_path)
    snap = h.meter.snapshot()
    json.dumps(snap)  # it goes into status.json and telemetry as it is
    assert snap["used_bytes"] == 0 and snap["clock"]["trusted"] is False
    assert snap["cap_bytes"] == 100 * MB


async def test_reset_from_the_fleet_clears_what_was_counted_up_to_now(tmp_path):
    h = Harness(tmp_path)
    await h.meter.poll_once()
    h.counters.add(rx=60 * MB)
    await h.poll()
    h.counters.add(rx=2000)
    await h.poll()  # pending in memory: written first, then cleared with the rest
    figures = h.meter.reset("carrier reset the plan", by="fleet")
    assert figures["ip_bytes_before"] == 60 * MB + 2000 and figures["by"] == "fleet"
    assert h.meter.snapshot()["ip_bytes"] == 0
    [event] = h.events(EventKind.METER_RESET)
    assert event["reason"] == "carrier reset the plan"
    h.counters.add(rx=10)
    await h.poll(60)
    assert stored_ip(h.stored()) == 10 and len(h.events(EventKind.METER_RESET)) == 1
    with pytest.raises(ValueError, match="needs a reason"):
        h.meter.reset("  ")


async def test_a_restart_after_writes_failed_counts_from_the_books_not_twice(tmp_path):
    h = Harness(tmp_path)
    db = FullDisk(h.path)
    h.meter = h.new_meter(db)
    await h.meter.poll_once()
    h.counters.add(rx=1000)
    await h.poll()
    h.meter.flush()
    db.full = True
    h.counters.add(rx=5000)
    await h.poll()
    assert not h.meter.flush()  # the shutdown's write fails too
    h.meter.close()
    # The same meter runs again (its run() restarted): it reopens the books.
    h.counters.add(rx=300)
    await h.poll()
    h.meter.flush()
    assert stored_ip(h.stored()) == 1000 + 5000 + 300
