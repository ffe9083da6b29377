"""The meter survives what a site does to it: kill -9 at random moments (a real
subprocess, 20 times) and wall-clock jumps (a stale boot date, NTP stepping it)."""

from __future__ import annotations

from datetime import datetime

from agent.clock import ManualClock
from agent.domain import EventKind
from agent.meter.admin import read_books
from agent.meter.budget import Plan
from agent.meter.ledger import MeterRules
from agent.meter.meter import Meter
from agent.meter.settings import MeterSettings
from agent.store import Store
from drivers.types import Counters
from hil.bench.meter import kill9_trials

TRIALS = 20


def test_kill9_at_random_moments_loses_nothing_while_the_counters_survive(tmp_path):
    result = kill9_trials(TRIALS, tmp_path, seed=None)
    assert result["kill9_trials"] == TRIALS
    assert result["bytes_sent"] > 0
    # Every kill left bytes the books did not yet hold; every one was recovered ...
    assert result["kills_past_last_write"] >= TRIALS // 2, result
    # ... and none twice.
    assert result["bytes_lost"] == 0, result
    assert result["bytes_counted"] == result["bytes_sent"]


# --- clock jumps ------------------------------------------------------------------------------

RULES = MeterRules(plan=Plan(cap_bytes=10**12), timezone="America/Chicago")
SETTINGS = MeterSettings(interface="lte0", rules=RULES, poll_interval_s=5.0,
                         persist_interval_s=60.0)


def at(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


class Counter:
    def __init__(self) -> None:
        self.rx = 0
        self.boot = "router-1"

    async def interface_counters(self, interface: str) -> Counters:
        return Counters(interface, self.rx, 0, 0, 0, self.boot)


def meter(store: Store, source: Counter, clock: ManualClock, host_boot: str,
          synced: list[bool | None]) -> Meter:
    return Meter(source, store, clock, SETTINGS, wall_synced=lambda: synced[0],
                 host_boot_id=lambda: host_boot)


async def poll(m: Meter, clock: ManualClock, source: Counter, rx: int, times: int = 1) -> None:
    for _ in range(times):
        source.rx += rx
        clock.advance(5)
        await m.poll_once()


async def test_a_clock_stepping_back_and_forth_while_running_changes_nothing(tmp_path):
    store = Store(tmp_path / "agent.db")
    source = Counter()
    clock = ManualClock(monotonic_s=1000.0, wall_s=at("2025-03-20T12:00:00-05:00"))
    m = meter(store, source, clock, "host-1", [None])
    await m.poll_once()
    await poll(m, clock, source, 1000, times=10)
    clock.jump_wall(-45 * 86400)  # someone sets the date back to February
    await poll(m, clock, source, 1000, times=10)
    assert m.snapshot()["clock"]["trusted"] is True  # counting on monotonic time
    clock.jump_wall(+45 * 86400)  # and forward again
    await poll(m, clock, source, 1000, times=10)
    clock.jump_wall(+400 * 86400)  # a wild jump to next year, unconfirmed by anything
    await poll(m, clock, source, 1000, times=10)
    m.flush()
    books = read_books(tmp_path / "agent.db")
    assert books is not None and books.cycle is not None
    # The steps back and forth were counted on monotonic time: all in March.
    [march] = books.history
    assert march["cycle_start"] == "2025-03-01" and march["ip_bytes"] == 30 * 1000
    # A forward step with no time service to deny it is the usual correction of a stale
    # clock, so the meter believes it: the cycle moves on, once, with every byte.
    assert books.cycle.totals.ip_bytes == 10 * 1000  # none lost, none twice
    kinds = [s.event.kind for s in store.events()]
    assert kinds.count(EventKind.METER_CYCLE) == 1
    store.close()


async def test_stale_boot_date_then_ntp_gives_bytes_to_their_true_month(tmp_path):
    store = Store(tmp_path / "agent.db")
    source = Counter()
    # The box runs through March 31, 23:40 local and writes its books.
    clock = ManualClock(monotonic_s=5000.0, wall_s=at("2025-03-31T23:40:00-05:00"))
    synced: list[bool | None] = [None]
    m = meter(store, source, clock, "host-1", synced)
    await m.poll_once()
    await poll(m, clock, source, 10_000, times=12)  # one minute: 120 kB in March
    m.flush()
    m.close()
    # Power cut. The router reboots too (its counters restart) and the box comes back
    # at a stale date, the fake-hwclock's save a day earlier. 23:45 is the true time.
    source.rx, source.boot = 0, "router-2"
    clock = ManualClock(monotonic_s=20.0, wall_s=at("2025-03-30T23:45:00-05:00"))
    m = meter(store, source, clock, "host-2", synced)
    await m.poll_once()
    assert m.snapshot()["clock"]["trusted"] is False
    await poll(m, clock, source, 1_000, times=180)  # 15 min: 180 kB, 23:45 -> 00:00
    await poll(m, clock, source, 2_000, times=24)  # 2 min into April: 48 kB
    snap = m.snapshot()
    assert snap["held_ip_bytes"] == 180_000 + 48_000
    assert snap["ip_bytes"] == 120_000 + 228_000  # held bytes show, counted once
    books = read_books(tmp_path / "agent.db")
    assert books is not None and books.cycle is not None
    assert books.cycle.start_wall_s == at("2025-03-01T00:00:00-06:00")  # no roll meanwhile
    # NTP steps the clock to the truth: 00:02 on April 1.
    clock.jump_wall(at("2025-04-01T00:02:00-05:00") - clock.wall())
    synced[0] = True
    await poll(m, clock, source, 500, times=1)
    m.flush()
    books = read_books(tmp_path / "agent.db")
    assert books is not None and books.cycle is not None and books.held == ()
    assert books.cycle.start_wall_s == at("2025-04-01T00:00:00-05:00")
    march = books.history[-1]
    assert march["cycle_start"] == "2025-03-01"
    # March: 120 kB before the cut, and the held bytes counted before 00:00 (179 polls
    # of 1 kB; the poll at 00:00:00 itself is April's). Held bytes are kept at ~15 s
    # resolution and never given an earlier time than they had, so a few of March's
    # last polls may go to April; no byte is lost or counted twice.
    assert 120_000 + 175_000 <= march["ip_bytes"] <= 120_000 + 179_000
    assert march["ip_bytes"] + books.cycle.totals.ip_bytes == 120_000 + 228_000 + 500
    cycles = [s.event for s in store.events() if s.event.kind is EventKind.METER_CYCLE]
    assert len(cycles) == 1
    store.close()


async def test_reboot_to_a_date_before_the_books_never_rolls_or_drops(tmp_path):
    store = Store(tmp_path / "agent.db")
    source = Counter()
    clock = ManualClock(monotonic_s=100.0, wall_s=at("2025-06-10T10:00:00-05:00"))
    m = meter(store, source, clock, "host-1", [None])
    await m.poll_once()
    await poll(m, clock, source, 7_000, times=3)
    m.flush()
    m.close()
    # Reboot to 1970 (no RTC at all); NTP never answers: bytes stay held, shown, kept.
    clock = ManualClock(monotonic_s=15.0, wall_s=0.0)
    m = meter(store, source, clock, "host-2", [None])
    await m.poll_once()
    await poll(m, clock, source, 3_000, times=20)
    m.flush()
    m.close()
    books = read_books(tmp_path / "agent.db")
    assert books is not None and books.cycle is not None
    assert books.cycle.totals.ip_bytes == 21_000 and books.held_totals.ip_bytes == 60_000
    assert books.cycle.start_wall_s == at("2025-06-01T00:00:00-05:00")
    assert [s for s in store.events() if s.event.kind is EventKind.METER_CYCLE] == []
    # The agent restarts again (same boot), the clock still unset; then NTP arrives.
    m = meter(store, source, clock, "host-2", [None])
    clock.jump_wall(at("2025-06-10T12:00:00-05:00"))
    await poll(m, clock, source, 1, times=1)
    m.flush()
    books = read_books(tmp_path / "agent.db")
    assert books is not None and books.cycle is not None and books.held == ()
    assert books.cycle.totals.ip_bytes == 21_000 + 60_000 + 1
    store.close()
