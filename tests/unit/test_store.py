from __future__ import annotations

import pytest

from agent.domain import Event, EventKind
from agent.store import Store, StoreError


def test_events_survive_reopen_in_order(tmp_path):
    store = Store(tmp_path / "a.db")
    for i in range(3):
        store.append_event(Event(EventKind.FAILOVER, 100.0 + i, {"i": i}))
    store.put("k", {"mode": "CELLULAR"})
    store.close()
    again = Store(tmp_path / "a.db")
    assert [e.event.data["i"] for e in again.events()] == [0, 1, 2]
    assert [e.event.data["i"] for e in again.recent_events(2)] == [1, 2]
    assert again.get("k") == {"mode": "CELLULAR"}
    again.mark_published(1)
    assert [e.seq for e in again.unpublished_events()] == [2, 3]
    again.close()


def test_unwritable_location_is_one_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StoreError, match="cannot open the state database"):
        Store(blocker / "sub" / "a.db")


def test_a_failed_write_leaves_no_transaction_open(tmp_path):
    """Whatever is raised inside a write, the next write works (no half-open BEGIN)."""
    from agent.domain import Event as Ev

    store = Store(tmp_path / "a.db")
    with pytest.raises(TypeError):
        store.append_event(Ev(EventKind.FAILOVER, 1.0, {"not json": object()}))
    store.put("k", 1)
    assert store.get("k") == 1
    store.close()
