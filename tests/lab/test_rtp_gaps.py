"""voice_path_gaps from tables: the outage figure the failover benchmark reports."""

from __future__ import annotations

import pytest

from hil.sims.rtp_stream import CELLULAR_SOURCE as B
from hil.sims.rtp_stream import PRIMARY_SOURCE as A
from hil.sims.rtp_stream import (
    Arrival,
    PathSwitch,
    parse_rtp,
    read_arrivals,
    rtp_packet,
    voice_path_gaps,
)

OTHER = "203.0.113.99"


def stream(source: str, start_s: float, first_seq: int, n: int, step_s: float = 0.02):
    return [Arrival(start_s + i * step_s, source, (first_seq + i) & 0xFFFF) for i in range(n)]


def test_nothing_arrived() -> None:
    gaps = voice_path_gaps([])
    assert gaps.switches == ()
    assert (gaps.failover_gap_s, gaps.failback_gap_s, gaps.longest_silence_s) == (None,) * 3
    assert (gaps.lost, gaps.duplicates, gaps.packets_by_source) == (0, 0, {})


def test_steady_primary_has_no_switch() -> None:
    gaps = voice_path_gaps(stream(A, 10.0, 100, 50))
    assert gaps.switches == ()
    assert gaps.failover_gap_s is None
    assert gaps.longest_silence_s == pytest.approx(0.02)
    assert gaps.packets_by_source == {A: 50}
    assert gaps.lost == 0


@pytest.mark.parametrize(
    ("arrivals", "failover_s", "failback_s", "lost"),
    [
        # Primary until 10.98 (seq 149), silence, LTE from 11.90 (seq 195): 45 lost.
        (stream(A, 10.0, 100, 50) + stream(B, 11.9, 195, 50), 0.92, None, 45),
        # ... and back to the primary after 0.1 s of silence (4 packets lost).
        (stream(A, 10.0, 100, 50) + stream(B, 11.9, 195, 50) + stream(A, 12.98, 249, 10),
         0.92, 0.1, 45 + 4),
        # The packets arrive in any order in the input.
        (list(reversed(stream(A, 10.0, 100, 50) + stream(B, 11.9, 195, 50))), 0.92, None, 45),
    ],
)
def test_failover_and_failback_gaps(arrivals, failover_s, failback_s, lost) -> None:
    gaps = voice_path_gaps(arrivals)
    assert gaps.failover_gap_s == pytest.approx(failover_s)
    if failback_s is None:
        assert gaps.failback_gap_s is None
    else:
        assert gaps.failback_gap_s == pytest.approx(failback_s)
    assert gaps.lost == lost


def test_switch_details() -> None:
    gaps = voice_path_gaps(stream(A, 10.0, 100, 50) + stream(B, 11.9, 195, 50))
    (switch,) = gaps.switches
    assert switch == PathSwitch(A, B, pytest.approx(10.98), pytest.approx(11.9),
                                pytest.approx(0.92), 45)


def test_a_late_primary_packet_makes_extra_switches_and_the_longest_is_reported() -> None:
    late = [Arrival(11.0, B, 150), Arrival(11.01, A, 110), Arrival(11.02, B, 151)]
    arrivals = [*stream(A, 10.0, 100, 10), *late]
    gaps = voice_path_gaps(arrivals)
    assert [(s.from_source, s.to_source) for s in gaps.switches] == [(A, B), (B, A), (A, B)]
    assert gaps.failover_gap_s == pytest.approx(11.0 - 10.18)
    assert gaps.failback_gap_s == pytest.approx(0.01)


def test_other_sources_are_counted_but_do_not_switch() -> None:
    arrivals = [Arrival(1.0, A, 1), Arrival(1.5, OTHER, None), Arrival(2.0, A, 2)]
    gaps = voice_path_gaps(arrivals)
    assert gaps.switches == ()
    assert gaps.packets_by_source == {A: 2, OTHER: 1}
    assert gaps.longest_silence_s == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("seqs", "lost", "duplicates"),
    [
        ([65534, 65535, 0, 1], 0, 0),  # wraps cleanly
        ([65535, 2], 2, 0),  # 0 and 1 lost across the wrap
        ([5, 6, 6, 7], 0, 1),  # a duplicate is counted once
        ([5, 7, 6, 8], 0, 0),  # reordered, nothing missing
        ([10, 20], 9, 0),
    ],
)
def test_loss_from_rtp_sequence_numbers(seqs, lost, duplicates) -> None:
    gaps = voice_path_gaps([Arrival(i * 0.02, A, seq) for i, seq in enumerate(seqs)])
    assert (gaps.lost, gaps.duplicates) == (lost, duplicates)


def test_without_sequence_numbers_the_switch_loss_is_unknown() -> None:
    gaps = voice_path_gaps([Arrival(1.0, A), Arrival(1.5, B)])
    assert gaps.switches[0].lost is None
    assert gaps.failover_gap_s == pytest.approx(0.5)


def test_rtp_packet_is_172_bytes_of_version_2_pcmu() -> None:
    packet = rtp_packet(65535, 160, 0x1234, marker=True)
    assert len(packet) == 172
    assert packet[0] == 0x80 and packet[1] == 0x80  # V=2; M=1, PT=0 (PCMU)
    assert parse_rtp(packet) == (65535, 160, 0x1234)
    assert parse_rtp(b"\x00" * 20) is None


def test_read_arrivals_from_sink_json_lines() -> None:
    lines = ['{"t": 1.5, "src": "198.51.100.2", "sport": 16384, "seq": 7, "bytes": 172}', ""]
    assert read_arrivals(lines) == [Arrival(1.5, A, 7)]
