"""The meter's document in SQLite: one row in its own table of the agent's database.

Why one JSON row: every write is one small transaction that replaces one page, so a
write every minute wears flash little, and the document is always consistent (the
last raw reading and the totals it produced are never written apart: that is what
makes a kill -9 lose nothing while the router's counters survive).

Why its own connection: the CLI's `meter reset` and the running meter both change the
document, each as read-modify-write inside `BEGIN IMMEDIATE`, so SQLite serialises
them and neither overwrites the other (WAL: readers never wait). `synchronous=FULL`
makes each commit durable against a power cut, not only against a crash.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from agent.meter.books import MeterDoc
from agent.store import StoreError

SCHEMA = """
CREATE TABLE IF NOT EXISTS meter_state (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    revision INTEGER NOT NULL,
    doc TEXT NOT NULL
);
"""
BUSY_TIMEOUT_S = 5.0


class MeterDB:
    def __init__(self, path: Path, *, readonly: bool = False) -> None:
        self.path = path
        self.readonly = readonly
        self._lock = threading.Lock()
        try:
            if readonly:
                uri = f"file:{path}?mode=ro"
                self._db = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_S,
                                           isolation_level=None, check_same_thread=False)
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                self._db = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S,
                                           isolation_level=None, check_same_thread=False)
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=FULL")
                self._db.executescript(SCHEMA)
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(
                f"cannot open the meter's state in {path} ({exc}); "
                "check that the disk has space and the directory is writable."
            ) from exc

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def load(self) -> MeterDoc:
        with self._lock:
            try:
                row = self._db.execute("SELECT doc FROM meter_state WHERE id = 1").fetchone()
            except sqlite3.OperationalError as exc:
                if self.readonly and "no such table" in str(exc):
                    return MeterDoc()
                raise self._error("read", exc) from exc
            except sqlite3.Error as exc:
                raise self._error("read", exc) from exc
        return _decode(row[0]) if row else MeterDoc()

    def revision(self) -> int:
        """The stored revision: a cheap read that tells whether anyone else wrote."""
        with self._lock:
            try:
                row = self._db.execute("SELECT revision FROM meter_state WHERE id = 1").fetchone()
            except sqlite3.Error as exc:
                raise self._error("read", exc) from exc
        return int(row[0]) if row else 0

    def transact(self, change: Callable[[MeterDoc], MeterDoc]) -> MeterDoc:
        """Read the stored document, apply `change`, store the result: one transaction.

        Raises StoreError (nothing changed) when the database cannot be written.
        """
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                row = self._db.execute("SELECT doc FROM meter_state WHERE id = 1").fetchone()
                stored = _decode(row[0]) if row else MeterDoc()
                new = change(stored)
                new = replace(new, revision=stored.revision + 1)
                self._db.execute(
                    "INSERT INTO meter_state(id, revision, doc) VALUES (1, ?, ?) "
                    "ON CONFLICT(id) DO UPDATE SET revision = excluded.revision, "
                    "doc = excluded.doc",
                    (new.revision, json.dumps(new.to_json(), separators=(",", ":"))),
                )
                self._db.execute("COMMIT")
            except BaseException as exc:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    raise self._error("write", exc) from exc
                raise
        return new

    def _error(self, what: str, exc: sqlite3.Error) -> StoreError:
        remedy = (
            "free disk space or fix the storage; the meter keeps counting in memory"
            if what == "write"
            else "check the file and its permissions"
        )
        return StoreError(f"cannot {what} the meter's state in {self.path} ({exc}); {remedy}.")


def _decode(text: str) -> MeterDoc:
    try:
        return MeterDoc.from_json(json.loads(text))
    except (ValueError, KeyError, TypeError) as exc:
        raise StoreError(
            f"the meter's stored state is unreadable ({exc}); "
            "restore the state database from a backup or report it."
        ) from exc
