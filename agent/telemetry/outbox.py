"""Store-and-forward for durable events: the store's `events` table is the queue.

Why the events table and not a table of its own: an event is written once, in one
transaction, and that row is both the log entry and the outbox entry. There is nothing
to keep consistent between two tables and no second flash write per event. Its
`seq INTEGER PRIMARY KEY AUTOINCREMENT` never goes back (SQLite keeps the high-water
mark even when old rows are pruned), so it is the wire `seq` as it is. `published`
turns 1 only after the broker's PUBACK with a success reason code.

The epoch: a random id made the first time the outbox meets a database, kept in the
store's `kv` table, so it lives exactly as long as the `seq` counter does. A per-start
epoch would make an event re-sent after a restart (its PUBACK was lost in the crash)
look new, and the reader could not drop the duplicate. A new database (new flash,
deleted state) restarts `seq` at 1 under a new epoch, which tells the reader to reset.

No paho here: `telemetry.mqtt` asks what to send next (`take`), reports what the broker
acknowledged (`acked`) and commits the acknowledgements in one transaction (`commit`).
"""

from __future__ import annotations

import re
import secrets

from agent.store import Store, StoredEvent
from agent.telemetry.contract import EPOCH_PATTERN, LATE_AFTER_S, event_message

EPOCH_KEY = "telemetry.epoch"


class Outbox:
    def __init__(self, store: Store, *, late_after_s: float = LATE_AFTER_S) -> None:
        self.store = store
        self.late_after_s = late_after_s
        self.epoch = self._load_epoch()
        #: Highest seq handed out in this session; the next `take` starts after it.
        self._cursor = 0
        #: seq -> monotonic seconds when it was handed to the broker connection.
        self._inflight: dict[int, float] = {}
        #: Acknowledged, not yet marked in the database (see `commit`).
        self._acked: list[int] = []

    def _load_epoch(self) -> str:
        epoch = self.store.get(EPOCH_KEY)
        if isinstance(epoch, str) and re.match(EPOCH_PATTERN, epoch):
            return epoch
        epoch = secrets.token_hex(4)
        self.store.put(EPOCH_KEY, epoch)
        return epoch

    # -- one broker session ------------------------------------------------------------

    def begin_session(self) -> None:
        """A new connection: everything not yet acknowledged is sent again, oldest first.

        MQTT allows a QoS 1 resend only on reconnect; the reader drops duplicates by
        (epoch, seq).
        """
        self._cursor = 0
        self._inflight.clear()

    def take(self, room: int) -> list[StoredEvent]:
        """Up to `room` unpublished events not yet sent in this session, in seq order."""
        if room <= 0:
            return []
        batch = self.store.unpublished_events(limit=room, after_seq=self._cursor)
        if batch:
            self._cursor = batch[-1].seq
        return batch

    def sent(self, seq: int, now_s: float) -> None:
        self._inflight[seq] = now_s

    def acked(self, seq: int) -> None:
        self._inflight.pop(seq, None)
        self._acked.append(seq)

    def rejected(self, seq: int) -> None:
        """The broker refused it (PUBACK reason >= 0x80): it stays unpublished for next session."""
        self._inflight.pop(seq, None)

    def commit(self) -> int:
        """Mark the acknowledged events published, in one transaction. Raises StoreError."""
        if not self._acked:
            return 0
        done = sorted(set(self._acked))
        self.store.mark_published_many(done)
        self._acked.clear()
        return len(done)

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    def oldest_inflight_age_s(self, now_s: float) -> float | None:
        return now_s - min(self._inflight.values()) if self._inflight else None

    # -- the wire ----------------------------------------------------------------------

    def payload(self, stored: StoredEvent, now_wall_s: float) -> bytes:
        return event_message(
            epoch=self.epoch,
            seq=stored.seq,
            kind=stored.event.kind.value,
            wall_time_s=stored.event.wall_time_s,
            data=stored.event.data,
            now_wall_s=now_wall_s,
            late_after_s=self.late_after_s,
        ).to_json()
