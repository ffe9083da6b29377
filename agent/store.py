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
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.domain import Event, EventKind

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
"""


class StoreError(Exception):
    """The state database cannot be used (disk full, read-only, corrupt)."""


@dataclass(frozen=True)
class StoredEvent:
    seq: int
    event: Event
    published: bool


class Store:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._listeners: list[Callable[[int], None]] = []
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(SCHEMA)
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(
                f"cannot open the state database {path} ({exc}); "
                "check that the disk has space and the directory is writable."
            ) from exc

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                yield self._db
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise StoreError(
                    f"cannot write the state database {self.path} ({exc}); "
                    "free disk space or fix the storage."
                ) from exc

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
        return [
            StoredEvent(seq, Event(EventKind(kind), wall, json.loads(data)), bool(pub))
            for seq, kind, wall, data, pub in rows
        ]

    def recent_events(self, count: int) -> list[StoredEvent]:
        """The newest `count` events, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, kind, wall_time_s, data, published FROM events "
                "ORDER BY seq DESC LIMIT ?",
                (count,),
            ).fetchall()
        return [
            StoredEvent(seq, Event(EventKind(kind), wall, json.loads(data)), bool(pub))
            for seq, kind, wall, data, pub in reversed(rows)
        ]

    def unpublished_events(self, limit: int = 100, after_seq: int = 0) -> list[StoredEvent]:
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, kind, wall_time_s, data, published FROM events "
                "WHERE published = 0 AND seq > ? ORDER BY seq LIMIT ?",
                (after_seq, limit),
            ).fetchall()
        return [
            StoredEvent(seq, Event(EventKind(kind), wall, json.loads(data)), bool(pub))
            for seq, kind, wall, data, pub in rows
        ]

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
