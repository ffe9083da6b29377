"""One SQLite file in WAL mode, shared by a thread-safe connection: what the agent's
store and the fleet notifier's state both need, written once.

Every write is a `BEGIN IMMEDIATE` transaction that either commits or rolls back,
whatever is raised inside it, so a failed write never leaves the connection stuck in a
half-open transaction. SQLite errors become the caller's own error class, one sentence.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class SqliteFile:
    def __init__(
        self,
        path: Path,
        schema: str,
        *,
        error: type[Exception],
        what: str,
        synchronous_full: bool = False,
    ) -> None:
        """`what` names the file for people ("the state database"); `error` is raised."""
        self.path = path
        self.lock = threading.Lock()
        self._error = error
        self._what = what
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self.db.execute("PRAGMA journal_mode=WAL")
            if synchronous_full:
                self.db.execute("PRAGMA synchronous=FULL")
            self.db.executescript(schema)
        except (sqlite3.Error, OSError) as exc:
            raise error(
                f"cannot open {what} {path} ({exc}); "
                "check that the disk has space and the directory is writable."
            ) from exc

    def close(self) -> None:
        with self.lock:
            self.db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        with self.lock:
            try:
                self.db.execute("BEGIN IMMEDIATE")
                yield self.db
                self.db.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback()
                raise self._error(
                    f"cannot write {self._what} {self.path} ({exc}); "
                    "free disk space or fix the storage."
                ) from exc
            except BaseException:
                self._rollback()
                raise

    def _rollback(self) -> None:
        if self.db.in_transaction:
            self.db.execute("ROLLBACK")
