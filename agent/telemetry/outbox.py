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

Bounded size: delivered events are kept (newest `keep_published`) so the fleet can ask
for a replay, then pruned. Undelivered events are never pruned silently: only past
`max_unpublished` (weeks of a dead link at any real event rate) are the oldest dropped,
the routine kinds before failovers, and an `events_dropped` event says how many and
which seqs, so the gap the reader sees in `seq` is explained.
"""

from __future__ import annotations

import logging
import re
import secrets
from typing import Any

from agent.domain import Event, EventKind
from agent.store import Store, StoredEvent
from agent.telemetry.contract import EPOCH_PATTERN, LATE_AFTER_S, MAX_REPLAY, event_message

log = logging.getLogger(__name__)

EPOCH_KEY = "telemetry.epoch"
DROPPED_KEY = "telemetry.events_dropped"
MAX_UNPUBLISHED = 20_000
KEEP_PUBLISHED = 2_000
#: Dropped last when the outbox overflows: what a person must hear about.
SPARED_KINDS = frozenset(
    {
        EventKind.FAILOVER,
        EventKind.FAILBACK,
        EventKind.BOTH_DOWN,
        EventKind.EVENTS_DROPPED,
        EventKind.TEST_FINISHED,
        EventKind.COMMAND,
        EventKind.CONFIG_CHANGED,
    }
)


class Outbox:
    def __init__(
        self,
        store: Store,
        *,
        late_after_s: float = LATE_AFTER_S,
        max_unpublished: int = MAX_UNPUBLISHED,
        keep_published: int = KEEP_PUBLISHED,
    ) -> None:
        self.store = store
        self.late_after_s = late_after_s
        self.max_unpublished = max_unpublished
        self.keep_published = keep_published
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

    # -- bounds and replay ----------------------------------------------------------------

    @property
    def events_dropped(self) -> int:
        """Events dropped for space since this database was made (reported in `tele`)."""
        value = self.store.get(DROPPED_KEY)
        return int(value) if isinstance(value, int) else 0

    def backlog(self) -> int:
        return self.store.event_stats()["unpublished"]

    def enforce_bounds(self, now_wall_s: float) -> int:
        """Prune delivered events beyond `keep_published`; past `max_unpublished`, drop the
        oldest undelivered ones and record that in an `events_dropped` event.

        Returns how many undelivered events were dropped. Raises StoreError.
        """
        self.store.delete_published_before(self.keep_published)
        excess = self.store.event_stats()["unpublished"] - self.max_unpublished
        if excess <= 0:
            return 0
        # One more than the excess: room for the event that records the drop.
        seqs = self.store.drop_unpublished(excess + 1, spare_kinds=SPARED_KINDS)
        if not seqs:
            return 0
        total = self.events_dropped + len(seqs)
        self.store.put(DROPPED_KEY, total)
        log.error(
            "the event outbox is full (%d undelivered); dropped the %d oldest (seq %d-%d)",
            self.max_unpublished,
            len(seqs),
            seqs[0],
            seqs[-1],
        )
        self.store.append_event(
            Event(
                EventKind.EVENTS_DROPPED,
                now_wall_s,
                {
                    "count": len(seqs),
                    "first_seq": seqs[0],
                    "last_seq": seqs[-1],
                    "total": total,
                    "reason": "outbox full",
                },
            )
        )
        return len(seqs)

    def replay(self, from_seq: int) -> dict[str, Any]:
        """Send stored events from `from_seq` on again (same epoch and seq), in order.

        At most MAX_REPLAY per call; what was pruned is gone and the result says from
        which seq the store still holds events.
        """
        oldest = self.store.event_stats()["first_seq"]
        count, first, last = self.store.mark_unpublished_from(from_seq, MAX_REPLAY)
        if count:
            self._cursor = min(self._cursor, first - 1)
        return {
            "queued": count,
            "first_seq": first or None,
            "last_seq": last or None,
            "oldest_kept_seq": oldest or None,
            "epoch": self.epoch,
        }

    # -- the wire ----------------------------------------------------------------------

    def payload(self, stored: StoredEvent, now_wall_s: float) -> bytes:
        """The wire form; a row that does not fit the contract goes as kind `unknown`."""
        fields: dict[str, Any] = {
            "epoch": self.epoch,
            "seq": stored.seq,
            "kind": stored.kind_name,
            "wall_time_s": stored.event.wall_time_s,
            "data": stored.event.data,
            "now_wall_s": now_wall_s,
            "late_after_s": self.late_after_s,
        }
        try:
            return event_message(**fields).to_json()
        except ValueError:  # pydantic's ValidationError is a ValueError
            log.warning("event %d does not fit the contract; sent as kind 'unknown'", stored.seq)
            data = {"original_kind": str(stored.kind_name)[:40], **stored.event.data}
            return event_message(**{**fields, "kind": "unknown", "data": data}).to_json()
