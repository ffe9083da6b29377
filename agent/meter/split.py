"""Cumulative byte totals -> bytes since the previous one. Pure.

The split of LTE bytes (VoIP, the agent's own traffic, blocked traffic) comes from
running totals kept elsewhere: the router's counters (`RouterState.voice_bytes`,
`agent_bytes`, `blocked_bytes`) and the MQTT client's count of its own bytes on LTE.
Each restarts from zero on its own (the router reboots, its table is created anew, the
agent restarts), so `advance` turns a stream of totals into deltas the same way for all:

- the first total seen is a baseline (0 counted): what the router counted before the
  agent watched it is not this process's to attribute; except for a total that is known
  to have started at zero in this process (`from_zero`, the MQTT client's), which counts
  in full;
- a total at or above the previous one: the difference;
- a smaller total: the counter restarted, and all of it is new;
- None (the source cannot tell now): nothing counted, and the previous total is kept, so
  a counter that comes back counts only what is new (or all of it, if it restarted).

Rows of tests/unit/test_meter_split.py cover each rule.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Tracker:
    """The last total seen, and whether the source ever gave one (None: never)."""

    last: int | None = None
    known: bool = False


def advance(tracker: Tracker, total: int | None, *, from_zero: bool = False) -> tuple[Tracker, int]:
    """(the tracker after `total`, the bytes it adds)."""
    if total is None:
        return tracker, 0
    total = max(0, int(total))
    previous = tracker.last
    if previous is None:
        moved = total if from_zero else 0
    elif total >= previous:
        moved = total - previous
    else:
        moved = total  # restarted
    return Tracker(total, True), moved
