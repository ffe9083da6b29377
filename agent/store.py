"""SQLite (WAL) for what must survive a crash or a power cut: the failover mode and
the event log that feeds the outbox.

Writes are rare on purpose (flash wears out): the mode is written only when it
changes, events only when they happen. `synchronous=FULL` on those writes because a
failover nobody hears about is worse than a few milliseconds.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.domain import Event, EventKind
from agent.sqlite_file import SqliteFile

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    wall_time_s REAL NOT NULL,
    data TEXT NOT NULL,
    published INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS commands (
    id TEXT PRIMARY KEY,
    name TEXT,
    status TEXT NOT NULL,
    record TEXT NOT NULL,
    received_wall_s REAL NOT NULL,
    reported INTEGER NOT NULL DEFAULT 0
);
"""


class StoreError(Exception):
    """The state database cannot be used (disk full, read-only, corrupt)."""


@dataclass(frozen=True)
class StoredEvent:
    seq: int
    event: Event
    published: bool
    #: The kind as stored, when this version does not know it (`event.kind` is UNKNOWN).
    raw_kind: str | None = None

    @property
    def kind_name(self) -> str:
        return self.raw_kind or self.event.kind.value


def _stored(seq: int, kind: str, wall: float, data: str, published: int) -> StoredEvent:
    """One row; a row this version cannot read fully is still returned, never raised.

    A kind written by a newer agent (after a downgrade) or unreadable data must not
    stall the outbox behind it: the event goes out with its original kind name, or
    with its data replaced by a note.
    """
    raw_kind: str | None = None
    try:
        event_kind = EventKind(kind)
    except ValueError:
        event_kind, raw_kind = EventKind.UNKNOWN, str(kind)
    try:
        body = json.loads(data)
        if not isinstance(body, dict):
            body = {"value": body}
    except (TypeError, ValueError):
        log.warning("event %s has unreadable data in the state database; sent without it", seq)
        body = {"unreadable_data": True}
    return StoredEvent(int(seq), Event(event_kind, float(wall), body), bool(published), raw_kind)


@dataclass(frozen=True)
class StoredCommand:
    """A command from the fleet, remembered by id (idempotence) with its latest status."""

    id: str
    name: str | None
    status: str
    #: The latest result message (JSON object) as published on cmd/res.
    record: dict[str, Any]
    received_wall_s: float
    reported: bool


class Store:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = SqliteFile(
            path, SCHEMA, error=StoreError, what="the state database", synchronous_full=True
        )
        self._lock = self._file.lock
        self._db = self._file.db
        self._listeners: list[Callable[[int], None]] = []

    def close(self) -> None:
        self._file.close()

    def _write(self) -> AbstractContextManager[sqlite3.Connection]:
        return self._file.transaction()

    def get(self, key: str) -> Any:
        with self._lock:
            row = self._db.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def put(self, key: str, value: Any) -> None:
        with self._write() as db:
            db.execute(
                "INSERT INTO kv(key, value) VALUES (?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (key, json.dumps(value)),
            )

    def append_event(self, event: Event) -> int:
        with self._write() as db:
            cursor = db.execute(
                "INSERT INTO events(kind, wall_time_s, data) VALUES (?, ?, ?)",
                (event.kind.value, event.wall_time_s, json.dumps(event.data, sort_keys=True)),
            )
            seq = int(cursor.lastrowid or 0)
        for listener in list(self._listeners):
            try:
                listener(seq)
            except Exception:
                log.exception("an event listener failed; the event is stored all the same")
        return seq

    def add_listener(self, listener: Callable[[int], None]) -> None:
        """Call `listener(seq)` after each event is committed (the MQTT outbox wakes on it).

        It runs in the appending thread, after the commit, and must not block.
        """
        self._listeners.append(listener)

    def remove_listener(self, listener: Callable[[int], None]) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def events(self, after_seq: int = 0, limit: int = 1000) -> list[StoredEvent]:
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, kind, wall_time_s, data, published FROM events "
                "WHERE seq > ? ORDER BY seq LIMIT ?",
                (after_seq, limit),
            ).fetchall()
        return [_stored(*row) for row in rows]

    def recent_events(self, count: int) -> list[StoredEvent]:
        """The newest `count` events, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, kind, wall_time_s, data, published FROM events "
                "ORDER BY seq DESC LIMIT ?",
                (count,),
            ).fetchall()
        return [_stored(*row) for row in reversed(rows)]

    def unpublished_events(self, limit: int = 100, after_seq: int = 0) -> list[StoredEvent]:
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, kind, wall_time_s, data, published FROM events "
                "WHERE published = 0 AND seq > ? ORDER BY seq LIMIT ?",
                (after_seq, limit),
            ).fetchall()
        return [_stored(*row) for row in rows]

    def mark_published(self, seq: int) -> None:
        with self._write() as db:
            db.execute("UPDATE events SET published = 1 WHERE seq = ?", (seq,))

    def mark_published_many(self, seqs: Iterable[int]) -> None:
        """One transaction (one flash write) for a burst of acknowledgements."""
        rows = [(seq,) for seq in seqs]
        if not rows:
            return
        with self._write() as db:
            db.executemany("UPDATE events SET published = 1 WHERE seq = ?", rows)

    # -- outbox bounds and replay (telemetry.outbox) -------------------------------------

    def event_stats(self) -> dict[str, int]:
        """Counts for the outbox: rows, unpublished rows, lowest and highest seq (0 if none)."""
        with self._lock:
            total, unpublished, low, high = self._db.execute(
                "SELECT COUNT(*), COALESCE(SUM(published = 0), 0), "
                "COALESCE(MIN(seq), 0), COALESCE(MAX(seq), 0) FROM events"
            ).fetchone()
        return {"total": total, "unpublished": unpublished, "first_seq": low, "last_seq": high}

    def delete_published_before(self, keep: int) -> int:
        """Drop the oldest published rows beyond the newest `keep` rows; returns how many."""
        with self._write() as db:
            cursor = db.execute(
                "DELETE FROM events WHERE published = 1 AND seq <= "
                "(SELECT seq FROM events ORDER BY seq DESC LIMIT 1 OFFSET ?)",
                (keep,),
            )
            return int(cursor.rowcount)

    def drop_unpublished(self, count: int, spare_kinds: Iterable[str] = ()) -> list[int]:
        """Delete the `count` oldest unpublished rows, those of `spare_kinds` last.

        Returns the seqs deleted (oldest first); the caller records that it happened.
        """
        spare = sorted(set(spare_kinds))
        marks = ",".join("?" * len(spare)) or "''"
        with self._write() as db:
            rows = db.execute(
                f"SELECT seq FROM events WHERE published = 0 ORDER BY kind IN ({marks}), seq "
                "LIMIT ?",
                (*spare, count),
            ).fetchall()
            seqs = sorted(int(r[0]) for r in rows)
            db.executemany("DELETE FROM events WHERE seq = ?", [(s,) for s in seqs])
        return seqs

    def mark_unpublished_from(self, from_seq: int, limit: int) -> tuple[int, int, int]:
        """Queue stored events from `from_seq` on again (at most `limit`): a replay.

        Returns (count, first seq, last seq) of what is queued; (0, 0, 0) if none.
        """
        with self._write() as db:
            rows = db.execute(
                "SELECT seq FROM events WHERE seq >= ? ORDER BY seq LIMIT ?", (from_seq, limit)
            ).fetchall()
            seqs = [int(r[0]) for r in rows]
            db.executemany("UPDATE events SET published = 0 WHERE seq = ?", [(s,) for s in seqs])
        return (len(seqs), seqs[0], seqs[-1]) if seqs else (0, 0, 0)

    # -- commands from the fleet (telemetry.commands) -------------------------------------

    def get_command(self, command_id: str) -> StoredCommand | None:
        with self._lock:
            row = self._db.execute(
                "SELECT id, name, status, record, received_wall_s, reported FROM commands "
                "WHERE id = ?",
                (command_id,),
            ).fetchone()
        return _command(row) if row else None

    def put_command(
        self,
        command_id: str,
        name: str | None,
        status: str,
        record: dict[str, Any],
        received_wall_s: float,
        *,
        reported: bool = False,
    ) -> None:
        with self._write() as db:
            db.execute(
                "INSERT INTO commands(id, name, status, record, received_wall_s, reported) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET "
                "status = excluded.status, record = excluded.record, "
                "reported = excluded.reported",
                (
                    command_id,
                    name,
                    status,
                    json.dumps(record, sort_keys=True),
                    received_wall_s,
                    int(reported),
                ),
            )

    def mark_command_reported(self, command_id: str, status: str) -> None:
        """Reported only if the status is still the one that was sent."""
        with self._write() as db:
            db.execute(
                "UPDATE commands SET reported = 1 WHERE id = ? AND status = ?",
                (command_id, status),
            )

    def unreported_commands(self) -> list[StoredCommand]:
        with self._lock:
            rows = self._db.execute(
                "SELECT id, name, status, record, received_wall_s, reported FROM commands "
                "WHERE reported = 0 ORDER BY received_wall_s"
            ).fetchall()
        return [_command(row) for row in rows]

    def prune_commands(self, keep: int) -> int:
        """Forget all but the newest `keep` command ids."""
        with self._write() as db:
            cursor = db.execute(
                "DELETE FROM commands WHERE id NOT IN "
                "(SELECT id FROM commands ORDER BY received_wall_s DESC LIMIT ?)",
                (keep,),
            )
            return int(cursor.rowcount)


def _command(row: Any) -> StoredCommand:
    cid, name, status, record, received, reported = row
    try:
        body = json.loads(record)
    except ValueError:
        body = {}
    return StoredCommand(cid, name, status, body, float(received), bool(reported))
