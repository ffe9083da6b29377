"""Counter deltas from tables: steady, reset, 32-bit wrap, several resets in one
interval, a change of driver or interface; frame headers removed per packet."""

from __future__ import annotations

import itertools

import pytest

from agent.meter.counter import DeltaKind, Reading, delta, ip_bytes

TOP32 = 1 << 32


def r(rx: int, tx: int, rxp: int = 0, txp: int = 0, *, boot: str = "b1",
      source: str = "linux:lte0", width: int = 64, frames: bool = False) -> Reading:
    return Reading(source, boot, width, frames, rx, tx, rxp, txp)


@pytest.mark.parametrize(
    ("name", "previous", "current", "kind", "expected"),
    [
        ("first reading is a baseline", None, r(5_000, 7_000, 5, 7), DeltaKind.BASELINE,
         (0, 0, 0, 0)),
        ("steady", r(1_000, 2_000, 10, 20), r(1_500, 2_100, 15, 21), DeltaKind.STEADY,
         (500, 100, 5, 1)),
        ("nothing moved", r(1_000, 2_000, 10, 20), r(1_000, 2_000, 10, 20), DeltaKind.STEADY,
         (0, 0, 0, 0)),
        ("reboot: new boot id, count what is there now", r(9_000, 9_000, 90, 90),
         r(300, 400, 3, 4, boot="b2"), DeltaKind.RESET, (300, 400, 3, 4)),
        ("reboot with more traffic since than before", r(100, 100, 1, 1),
         r(5_000, 6_000, 50, 60, boot="b2"), DeltaKind.RESET, (5_000, 6_000, 50, 60)),
        ("several reboots in one interval look like one", r(9_000, 9_000, 9, 9, boot="b1"),
         r(250, 250, 2, 2, boot="b3"), DeltaKind.RESET, (250, 250, 2, 2)),
        ("64-bit counter going back is a reset (cleared by hand)", r(10_000, 10_000, 10, 10),
         r(50, 20_000, 1, 20), DeltaKind.RESET, (50, 20_000, 1, 20)),
        ("32-bit rx wrap", r(TOP32 - 100, 500, 7, 7, width=32),
         r(400, 600, 8, 8, width=32), DeltaKind.WRAP, (500, 100, 1, 1)),
        ("32-bit wrap of bytes and packets independently",
         r(TOP32 - 10, TOP32 - 20, TOP32 - 1, 5, width=32),
         r(90, 80, 1, 6, width=32), DeltaKind.WRAP, (100, 100, 2, 1)),
        ("32-bit counter to exactly zero", r(TOP32 - 1, 0, width=32), r(0, 0, width=32),
         DeltaKind.WRAP, (1, 0, 0, 0)),
        ("32-bit backward by more than half the range is a reset, not a wrap",
         r(1_000_000_000, 10, width=32), r(100, 20, width=32), DeltaKind.RESET,
         (100, 20, 0, 0)),
        ("32-bit reset by boot id even when a wrap would fit", r(TOP32 - 10, 0, width=32),
         r(5, 5, boot="b2", width=32), DeltaKind.RESET, (5, 5, 0, 0)),
        ("another interface: new baseline", r(1_000, 1_000),
         r(9_999, 9_999, source="linux:lte1"), DeltaKind.SOURCE_CHANGED, (0, 0, 0, 0)),
        ("another driver: new baseline", r(1_000, 1_000),
         r(9_999, 9_999, source="routeros:lte1"), DeltaKind.SOURCE_CHANGED, (0, 0, 0, 0)),
        ("another counter width: new baseline", r(1_000, 1_000, width=64),
         r(10, 10, width=32), DeltaKind.SOURCE_CHANGED, (0, 0, 0, 0)),
    ],
)
def test_delta(name, previous, current, kind, expected):
    d = delta(previous, current)
    assert d.kind is kind, name
    assert (d.rx_bytes, d.tx_bytes, d.rx_packets, d.tx_packets) == expected, name


def test_a_sequence_of_readings_sums_to_the_traffic_across_wraps_and_a_reset():
    # 32-bit device: 3 GB per interval wraps the counter; then it reboots.
    step = 3_000_000_000 // 4
    readings, rx = [], 0
    for _ in range(8):
        rx += step
        readings.append(r(rx % TOP32, 0, width=32))
    readings.append(r(1_000, 0, boot="b2", width=32))  # rebooted: 1000 B since
    total = sum(delta(a, b).rx_bytes for a, b in itertools.pairwise(readings))
    assert total == 7 * step + 1_000


@pytest.mark.parametrize(
    ("frames", "overhead", "counted", "expected"),
    [
        (False, 14, (1_042_000, 5_210, 1_000, 5), (1_042_000, 5_210)),
        # Linux on Ethernet/veth: 5 UDP datagrams of 1000 B count 5 x 1042 frame bytes.
        (True, 14, (5 * 1042, 5 * 1042, 5, 5), (5 * 1028, 5 * 1028)),
        (True, 18, (1_800, 0, 10, 0), (1_620, 0)),  # VLAN-tagged
        (True, 14, (10, 0, 1, 0), (0, 0)),  # never negative
    ],
)
def test_ip_bytes_remove_the_frame_header_per_packet(frames, overhead, counted, expected):
    rx, tx, rxp, txp = counted
    assert ip_bytes(rx, tx, rxp, txp, counts_frames=frames,
                    frame_overhead_bytes=overhead) == expected


def test_reading_round_trips_through_json():
    reading = r(1, 2, 3, 4, boot="x/ifindex-7", width=32, frames=True)
    assert Reading.from_json(reading.to_json()) == reading
