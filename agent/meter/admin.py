"""What a person (the CLI) or the fleet (a command) does to the meter's books, safely
while the agent runs: read them, and reset the current cycle with a reason.

A reset is one transaction on the stored document (agent/meter/persist.py): the current
cycle's count goes to zero, the reason goes into the document's outbox as a
`meter_reset` event. The running meter sees the revision change at its next poll
(every few seconds), writes what it counted since its last write on top of the reset,
and hands the event to the store, which reports it. With the agent stopped, the reset
is stored all the same and reported at the next start. Nothing the meter counted is
overwritten: both writers change the stored document in place, never from a copy.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.meter import report
from agent.meter.clocktrust import BEHIND_TOLERANCE_S, WALL_FLOOR_S
from agent.meter.ledger import MeterDoc, MeterRules, reset
from agent.meter.persist import MeterDB
from agent.meter.settings import MeterSettings
from agent.store import StoreError

if TYPE_CHECKING:
    from agent.config import Settings

#: The agent's database file in its state directory (agent/app.py opens the same).
DB_FILE_NAME = "agent.db"


def db_path(state_dir: Path) -> Path:
    return state_dir / DB_FILE_NAME


def read_books(path: Path) -> MeterDoc | None:
    """The stored document, read-only; None when the meter has never written."""
    if not path.exists():
        return None
    db = MeterDB(path, readonly=True)
    try:
        doc = db.load()
    finally:
        db.close()
    return doc if doc.revision > 0 else None


def reset_books(path: Path, reason: str, wall_s: float, rules: MeterRules) -> MeterDoc:
    """Reset the current cycle's count; returns the document as stored.

    Raises StoreError when there are no books yet or they cannot be written.
    """
    reason = " ".join(reason.split())
    if not reason:
        raise ValueError("a reset needs a reason; say why with --reason")
    if read_books(path) is None:
        raise StoreError(
            f"the meter has counted nothing yet in {path}; there is nothing to reset."
        )
    db = MeterDB(path)
    try:
        return db.transact(lambda doc: reset(doc, reason, wall_s, rules))
    finally:
        db.close()


def stored_view(settings: Settings, now_wall_s: float) -> dict[str, Any] | None:
    """The snapshot computed from the stored books (the agent may be stopped); None when
    the meter has never written. Up to one persist interval behind a running agent."""
    doc = read_books(db_path(settings.agent.state_dir))
    if doc is None:
        return None
    rules = MeterSettings.from_settings(settings).rules
    trust = doc.trust
    trusted = now_wall_s >= max(WALL_FLOOR_S, trust.high_water_wall_s - BEHIND_TOLERANCE_S)
    reason = "as last written" if trusted else "this clock reads earlier than the meter's books"
    snap = report.snapshot(doc, rules, now_wall_s, clock_trusted=trusted, clock_reason=reason)
    snap["interface"] = settings.links.cellular.interface
    return snap


def live_view(status: dict[str, Any] | None) -> dict[str, Any] | None:
    """The running agent's snapshot from its status file, when it carries one."""
    meter = (status or {}).get("meter")
    return dict(meter) if isinstance(meter, dict) and "used_bytes" in meter else None
