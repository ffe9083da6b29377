"""The outbox's bounds and the store's read path: nothing is dropped silently, and a row
this version cannot read never stalls the rows behind it (SQLite on disk; the last
test against a real mosquitto).
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.config import MqttSection
from agent.domain import Event, EventKind
from agent.store import Store
from agent.telemetry.contract import Channel, topic
from agent.telemetry.mqtt import MqttOptions, TelemetryClient
from agent.telemetry.outbox import Outbox
from tests.helpers.mosquitto import mosquitto, peer, until

__all__ = ["mosquitto"]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    db = Store(tmp_path / "agent.db")
    try:
        yield db
    finally:
        db.close()


def append(store: Store, kind: EventKind, n: int) -> int:
    return store.append_event(Event(kind, 1_800_000_000.0 + n, {"n": n}))


def raw_row(path: Path, kind: str, data: str) -> int:
    """A row as a newer agent (or a damaged disk) could have left it."""
    db = sqlite3.connect(path)
    try:
        cursor = db.execute(
            "INSERT INTO events(kind, wall_time_s, data) VALUES (?, ?, ?)", (kind, 1.0, data)
        )
        db.commit()
        return int(cursor.lastrowid or 0)
    finally:
        db.close()


def test_delivered_events_are_pruned_beyond_what_replay_keeps(store):
    outbox = Outbox(store, keep_published=3, max_unpublished=100)
    seqs = [append(store, EventKind.MODE_CHANGED, n) for n in range(6)]
    store.mark_published_many(seqs[:5])
    assert outbox.enforce_bounds(0.0) == 0
    assert [e.seq for e in store.events()] == seqs[3:]  # newest 3 rows; unpublished kept
    assert outbox.replay(seqs[0])["oldest_kept_seq"] == seqs[3]


def test_a_full_outbox_drops_the_routine_oldest_first_and_says_so(store):
    outbox = Outbox(store, max_unpublished=5)
    failover = append(store, EventKind.FAILOVER, 0)
    routine = [append(store, EventKind.MODE_CHANGED, n) for n in range(1, 8)]
    dropped = outbox.enforce_bounds(1_800_000_100.0)
    # 8 waiting, room for 5 including the record of the drop: the 4 oldest routine ones go.
    assert dropped == 4
    left = store.unpublished_events()
    assert [e.seq for e in left][:4] == [failover, *routine[4:]]
    record = left[-1]
    assert record.event.kind is EventKind.EVENTS_DROPPED
    assert record.event.data == {
        "count": 4,
        "first_seq": routine[0],
        "last_seq": routine[3],
        "total": 4,
        "reason": "outbox full",
    }
    assert outbox.events_dropped == 4 and len(left) == 5


def test_rows_this_version_cannot_read_are_still_sent(tmp_path):
    path = tmp_path / "agent.db"
    store = Store(path)
    try:
        outbox = Outbox(store)
        newer = raw_row(path, "sim_swapped", json.dumps({"iccid_changed": True}))
        broken = raw_row(path, "failover", "{not json")
        weird = raw_row(path, "Not A Kind!", "{}")
        normal = append(store, EventKind.FAILBACK, 1)
        rows = store.unpublished_events()
        assert [r.seq for r in rows] == [newer, broken, weird, normal]
        bodies = [json.loads(outbox.payload(r, 10.0)) for r in rows]
        assert bodies[0]["kind"] == "sim_swapped" and bodies[0]["data"] == {"iccid_changed": True}
        assert bodies[1]["kind"] == "failover" and bodies[1]["data"] == {"unreadable_data": True}
        assert (
            bodies[2]["kind"] == "unknown" and bodies[2]["data"]["original_kind"] == "Not A Kind!"
        )
        assert bodies[3]["kind"] == "failback"
        assert [e.kind_name for e in store.recent_events(2)] == ["Not A Kind!", "failback"]
    finally:
        store.close()


async def test_an_unknown_kind_does_not_stall_reporting(mosquitto, tmp_path):
    path = tmp_path / "agent.db"
    store = Store(path)
    evt = topic("site-3", Channel.EVT)
    try:
        with peer(mosquitto, [evt]) as fleet:
            newer = raw_row(path, "from_the_future", "{}")
            options = MqttOptions(poll_s=0.2, will_delay_s=0, drain_on_stop_s=1.0)
            settings = MqttSection(host=mosquitto.host, port=mosquitto.port, tls=False)
            client = TelemetryClient(settings, "site-3", store, options=options)
            stop = asyncio.Event()
            task = asyncio.create_task(client.run(stop))
            try:
                after = store.append_event(Event(EventKind.FAILOVER, time.time(), {}))
                await until(lambda: len(fleet.on(evt)) == 2, "both events")
                await until(lambda: not store.unpublished_events(), "both acknowledged")
            finally:
                stop.set()
                await asyncio.wait_for(task, 10)
        assert [(m.body["seq"], m.body["kind"]) for m in fleet.on(evt)] == [
            (newer, "from_the_future"),
            (after, "failover"),
        ]
    finally:
        store.close()
