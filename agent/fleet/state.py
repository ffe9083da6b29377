"""The notifier's memory (SQLite): what it has seen, what it must mail, open failovers.

Why a database and not memory: the notifier is told each event at least once, and
more than once after a reconnect, a redelivery or a replay the fleet asked for. A
customer must get one mail per failover and one per recovery, across restarts too.
So the key `(device, epoch, seq)` is recorded in the same transaction as the mail it
causes; the MQTT message is acknowledged only after that commit; the mail is sent
from the table and marked sent after the SMTP server took it. A crash between the
SMTP hand-over and the mark can send one mail twice; nothing can send it zero times.
"""

from __future__ import annotations

import json
import sqlite3
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.sqlite_file import SqliteFile

SCHEMA = """
CREATE TABLE IF NOT EXISTS seen (
    device TEXT NOT NULL, epoch TEXT NOT NULL, seq INTEGER NOT NULL,
    kind TEXT NOT NULL, wall_time_s REAL NOT NULL,
    PRIMARY KEY (device, epoch, seq)
);
CREATE TABLE IF NOT EXISTS mails (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL UNIQUE,
    recipients TEXT NOT NULL,
    subject TEXT NOT NULL,
    body TEXT NOT NULL,
    created_wall_s REAL NOT NULL,
    sent_wall_s REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_try_wall_s REAL NOT NULL DEFAULT 0,
    last_error TEXT
);
CREATE TABLE IF NOT EXISTS sites (
    device TEXT PRIMARY KEY,
    doc TEXT NOT NULL
);
"""


class StateError(Exception):
    """The notifier's state file cannot be used."""


@dataclass(frozen=True)
class Mail:
    id: int
    key: str
    recipients: list[str]
    subject: str
    body: str
    attempts: int


class NotifierState:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = SqliteFile(path, SCHEMA, error=StateError, what="the notifier's state")
        self._lock = self._file.lock
        self._db = self._file.db

    def close(self) -> None:
        self._file.close()

    def transaction(self) -> AbstractContextManager[sqlite3.Connection]:
        return self._file.transaction()

    # -- inside a transaction -------------------------------------------------------------

    @staticmethod
    def mark_seen(
        db: sqlite3.Connection, device: str, epoch: str, seq: int, kind: str, wall_s: float
    ) -> bool:
        """True if this (device, epoch, seq) is new."""
        cursor = db.execute(
            "INSERT OR IGNORE INTO seen(device, epoch, seq, kind, wall_time_s) "
            "VALUES (?, ?, ?, ?, ?)",
            (device, epoch, seq, kind, wall_s),
        )
        return cursor.rowcount == 1

    @staticmethod
    def queue_mail(
        db: sqlite3.Connection,
        key: str,
        recipients: list[str],
        subject: str,
        body: str,
        now_wall_s: float,
    ) -> None:
        db.execute(
            "INSERT OR IGNORE INTO mails(key, recipients, subject, body, created_wall_s) "
            "VALUES (?, ?, ?, ?, ?)",
            (key, json.dumps(recipients), subject, body, now_wall_s),
        )

    @staticmethod
    def site_doc(db: sqlite3.Connection, device: str) -> dict[str, Any]:
        row = db.execute("SELECT doc FROM sites WHERE device = ?", (device,)).fetchone()
        return json.loads(row[0]) if row else {}

    @staticmethod
    def put_site_doc(db: sqlite3.Connection, device: str, doc: dict[str, Any]) -> None:
        db.execute(
            "INSERT INTO sites(device, doc) VALUES (?, ?) "
            "ON CONFLICT(device) DO UPDATE SET doc = excluded.doc",
            (device, json.dumps(doc, sort_keys=True)),
        )

    # -- the mail queue -------------------------------------------------------------------

    def due_mails(self, now_wall_s: float, limit: int = 20) -> list[Mail]:
        with self._lock:
            rows = self._db.execute(
                "SELECT id, key, recipients, subject, body, attempts FROM mails "
                "WHERE sent_wall_s IS NULL AND next_try_wall_s <= ? ORDER BY id LIMIT ?",
                (now_wall_s, limit),
            ).fetchall()
        return [Mail(r[0], r[1], json.loads(r[2]), r[3], r[4], r[5]) for r in rows]

    def next_try_wall_s(self) -> float | None:
        with self._lock:
            row = self._db.execute(
                "SELECT MIN(next_try_wall_s) FROM mails WHERE sent_wall_s IS NULL"
            ).fetchone()
        return row[0] if row and row[0] is not None else None

    def mail_sent(self, mail_id: int, now_wall_s: float) -> None:
        with self.transaction() as db:
            db.execute("UPDATE mails SET sent_wall_s = ? WHERE id = ?", (now_wall_s, mail_id))

    def mail_failed(self, mail_id: int, error: str, next_try_wall_s: float) -> None:
        with self.transaction() as db:
            db.execute(
                "UPDATE mails SET attempts = attempts + 1, last_error = ?, next_try_wall_s = ? "
                "WHERE id = ?",
                (error[:300], next_try_wall_s, mail_id),
            )

    def mails(self) -> list[dict[str, Any]]:
        """Every mail, for tests and `fleet notify --status`."""
        with self._lock:
            rows = self._db.execute(
                "SELECT key, recipients, subject, sent_wall_s, attempts, last_error FROM mails "
                "ORDER BY id"
            ).fetchall()
        return [
            {"key": r[0], "recipients": json.loads(r[1]), "subject": r[2], "sent": r[3] is not None,
             "attempts": r[4], "last_error": r[5]}
            for r in rows
        ]  # fmt: skip
