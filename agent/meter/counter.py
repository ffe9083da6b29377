"""Raw interface counters -> bytes and packets since the previous reading. Pure.

A device's counters are not a meter: they restart from zero when it reboots, wrap at
2^32 on some devices, and mean nothing when the agent starts reading another interface
or another driver. `delta` turns two readings into what passed between them, and says
which case it saw, so the shell can log it and persist at once.

Rules (each has a row in tests/unit/test_meter_counter.py):

- First reading, or a different source (driver, interface or counter width): a
  baseline, delta 0. The device's history before the agent watched it is not ours
  (counting it would charge months of someone else's traffic to this cycle).
- Same `boot_id`, every counter moved forward: the difference.
- Same `boot_id`, a 32-bit counter moved backward by a plausible amount: a wrap
  (`current + 2^32 - previous`). Each of the four counters wraps on its own.
- A different `boot_id` (the device rebooted, or the interface was re-created), or a
  backward step no wrap explains (counters cleared by hand): a reset. What the
  counters hold now all passed since the reset, so the delta is the current value.
  Several resets between two readings look the same as one: the bytes counted before
  the last reset and after the previous reading are gone from the device, and no
  reader can recover them (docs/meter.md says how little that is with a 5 s poll).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

#: Bytes of Ethernet header per packet when a counter counts frames (no VLAN tag, no FCS:
#: Linux and RouterOS count the frame as the driver sees it).
ETHERNET_HEADER_BYTES = 14


class DeltaKind(enum.StrEnum):
    BASELINE = "baseline"  # first reading ever: nothing counted
    SOURCE_CHANGED = "source_changed"  # another driver, interface or width: nothing counted
    STEADY = "steady"
    WRAP = "wrap"  # at least one 32-bit counter wrapped
    RESET = "reset"  # the device's counters restarted (reboot, re-created interface, cleared)


@dataclass(frozen=True)
class Reading:
    """One reading of an interface's counters, as the meter keeps it."""

    #: Where the numbers come from: "<driver>:<interface>".
    source: str
    boot_id: str
    width_bits: int
    counts_frames: bool
    rx_bytes: int
    tx_bytes: int
    rx_packets: int
    tx_packets: int

    def values(self) -> tuple[int, int, int, int]:
        return (self.rx_bytes, self.tx_bytes, self.rx_packets, self.tx_packets)

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "boot_id": self.boot_id,
            "width_bits": self.width_bits,
            "counts_frames": self.counts_frames,
            "rx_bytes": self.rx_bytes,
            "tx_bytes": self.tx_bytes,
            "rx_packets": self.rx_packets,
            "tx_packets": self.tx_packets,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Reading:
        return cls(
            source=str(data["source"]),
            boot_id=str(data["boot_id"]),
            width_bits=int(data["width_bits"]),
            counts_frames=bool(data["counts_frames"]),
            rx_bytes=int(data["rx_bytes"]),
            tx_bytes=int(data["tx_bytes"]),
            rx_packets=int(data["rx_packets"]),
            tx_packets=int(data["tx_packets"]),
        )


@dataclass(frozen=True)
class Delta:
    """What passed between two readings: raw counter units (frames when counts_frames)."""

    kind: DeltaKind
    rx_bytes: int = 0
    tx_bytes: int = 0
    rx_packets: int = 0
    tx_packets: int = 0

    @property
    def empty(self) -> bool:
        return not (self.rx_bytes or self.tx_bytes or self.rx_packets or self.tx_packets)


def delta(previous: Reading | None, current: Reading) -> Delta:
    """Bytes and packets that passed from `previous` to `current` (see the module doc)."""
    if previous is None:
        return Delta(DeltaKind.BASELINE)
    if previous.source != current.source or previous.width_bits != current.width_bits:
        return Delta(DeltaKind.SOURCE_CHANGED)
    if previous.boot_id != current.boot_id:
        return Delta(DeltaKind.RESET, *current.values())
    moved: list[int] = []
    wrapped = False
    for before, now in zip(previous.values(), current.values(), strict=True):
        if now >= before:
            moved.append(now - before)
            continue
        step = _wrap_step(before, now, current.width_bits)
        if step is None:
            # A backward step no wrap explains: the counters were cleared.
            return Delta(DeltaKind.RESET, *current.values())
        moved.append(step)
        wrapped = True
    kind = DeltaKind.WRAP if wrapped else DeltaKind.STEADY
    return Delta(kind, *moved)


def _wrap_step(before: int, now: int, width_bits: int) -> int | None:
    """The forward distance when a `width_bits` counter went from `before` past its top
    to `now`, or None when that is not plausible.

    Only narrow counters wrap in practice (a 64-bit byte counter at 10 Gbit/s wraps
    after 467 years). A wrap is plausible when the distance is under half the range,
    the rule SNMP managers use for Counter32: anything larger is far likelier to be a
    reset that happened to land below the previous value.
    """
    if width_bits >= 64 or before >= 1 << width_bits:
        return None
    step = now + (1 << width_bits) - before
    return step if step < 1 << (width_bits - 1) else None


def ip_bytes(
    rx_bytes: int,
    tx_bytes: int,
    rx_packets: int,
    tx_packets: int,
    *,
    counts_frames: bool,
    frame_overhead_bytes: int = ETHERNET_HEADER_BYTES,
) -> tuple[int, int]:
    """(rx, tx) IP bytes, as carriers bill them: the frame header removed per packet.

    Never below zero: a counter read between a packet's bytes and its packet count
    being updated can be off by one packet, which must not turn into a negative bill.
    """
    if not counts_frames:
        return rx_bytes, tx_bytes
    return (
        max(0, rx_bytes - frame_overhead_bytes * rx_packets),
        max(0, tx_bytes - frame_overhead_bytes * tx_packets),
    )
