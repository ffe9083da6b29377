"""Figures from UDP echo runs (agent.installer.echo_figures), from hand-computed tables."""

from __future__ import annotations

import math

import pytest

from agent.installer.echo_figures import (
    CapacityFigures,
    RoundTripFigures,
    capacity_figures,
    ip_bytes,
    nearest_rank,
    round_trip_figures,
    successive_difference_jitter_ms,
)


def _mos(r: float) -> float:
    """G.107 Annex B, written out again so the tables check the whole chain."""
    return 1 + 0.035 * r + r * (r - 60) * (100 - r) * 7e-6


# (case, sent, rtts_s, expected fields). Datagrams of 172 B payload: 200 B on the wire.
ROUND_TRIPS = [
    (
        "none lost",
        4,
        [0.010, 0.012, 0.011, 0.015],
        # median (11 + 12) / 2; p90 = rank ceil(3.6) = 4 of [10 11 12 15];
        # jitter (2 + 1 + 4) / 3; R = 93.2 - 0.024 * (11.5/2 + 2 * 7/3 + 20) = 92.47.
        dict(
            received=4,
            loss_pct=0.0,
            rtt_ms=11.5,
            rtt_p90_ms=15.0,
            jitter_ms=7 / 3,
            r_factor=92.47,
            mos=_mos(92.47),
            bytes_sent=800,
            bytes_received=800,
        ),
    ),
    (
        "two of five lost",
        5,
        [0.020, None, 0.030, None, 0.025],
        # [20 30 25]: median 25, p90 rank 3 = 30, jitter (10 + 5) / 2 (the gaps are
        # skipped, not bridged). One-way loss 100 (1 - sqrt(0.6)) = 22.5403 %:
        # Ie_eff = 95 * 22.5403 / 47.6403 = 44.9479; Id = 0.024 * (12.5 + 15 + 20) = 1.14.
        dict(
            received=3,
            loss_pct=40.0,
            rtt_ms=25.0,
            rtt_p90_ms=30.0,
            jitter_ms=7.5,
            r_factor=93.2 - 1.14 - 44.94787303,
            mos=None,
            bytes_sent=1000,
            bytes_received=600,
        ),
    ),
    (
        "all lost",
        3,
        [None, None, None],
        dict(
            received=0,
            loss_pct=100.0,
            rtt_ms=None,
            rtt_p90_ms=None,
            jitter_ms=None,
            r_factor=None,
            mos=None,
            bytes_sent=600,
            bytes_received=0,
        ),
    ),
    (
        "one reply: no jitter to measure, the E-model is given 0",
        2,
        [0.050, None],
        # One-way loss 100 (1 - sqrt(0.5)) = 29.2893 %: Ie_eff = 95 * 29.2893 / 54.3893
        # = 51.1587; Id = 0.024 * (25 + 20) = 1.08.
        dict(
            received=1,
            loss_pct=50.0,
            rtt_ms=50.0,
            rtt_p90_ms=50.0,
            jitter_ms=None,
            r_factor=93.2 - 1.08 - 51.15867384,
            mos=None,
            bytes_sent=400,
            bytes_received=200,
        ),
    ),
    (
        "jitter: alternating 10 and 30 ms",
        6,
        [0.010, 0.030, 0.010, 0.030, 0.010, 0.030],
        # Every difference is 20 ms; median 20; p90 rank ceil(5.4) = 6 -> 30.
        # R = 93.2 - 0.024 * (10 + 40 + 20) = 91.52.
        dict(
            received=6,
            loss_pct=0.0,
            rtt_ms=20.0,
            rtt_p90_ms=30.0,
            jitter_ms=20.0,
            r_factor=91.52,
            mos=_mos(91.52),
            bytes_sent=1200,
            bytes_received=1200,
        ),
    ),
]


@pytest.mark.parametrize(
    ("case", "sent", "rtts_s", "expected"), ROUND_TRIPS, ids=[row[0] for row in ROUND_TRIPS]
)
def test_round_trip_figures(
    case: str, sent: int, rtts_s: list[float | None], expected: dict[str, float | None]
) -> None:
    figures = round_trip_figures(sent, rtts_s, 172, "g711")
    assert figures.sent == sent
    assert figures.ignored == 0 and figures.detail is None
    for name, want in expected.items():
        got = getattr(figures, name)
        if want is None and name == "mos" and figures.r_factor is not None:
            assert got == pytest.approx(_mos(figures.r_factor)), name
        elif want is None:
            assert got is None, name
        else:
            assert got == pytest.approx(want, abs=1e-6), name


def test_mos_is_the_health_monitors_for_the_same_figures() -> None:
    # 2 of 5 lost: the health scoring would feed voice_quality(25, 7.5, 40 %) too.
    from agent.health.emodel import voice_quality

    figures = round_trip_figures(5, [0.020, None, 0.030, None, 0.025], 172, "g711")
    assert (figures.r_factor, figures.mos) == voice_quality(25.0, 7.5, 40.0, "g711")


def test_codec_changes_the_rating() -> None:
    rtts = [0.02] * 10
    g711 = round_trip_figures(10, rtts, 172, "g711")
    g729 = round_trip_figures(10, rtts, 172, "g729")
    assert g711.r_factor is not None and g729.r_factor is not None
    # G.729: Ie = 11, and 5 ms more packetisation (0.12 R).
    assert g711.r_factor - g729.r_factor == pytest.approx(11 + 0.024 * 5)


def test_bytes_count_what_reached_the_kernel_and_everything_that_came_back() -> None:
    figures = round_trip_figures(
        4,
        [0.01, None, None, None],
        172,
        "g711",
        datagrams_sent=2,
        ignored=3,
        ignored_bytes=3 * 200,
        detail="2 not sent",
    )
    assert (figures.bytes_sent, figures.bytes_received) == (2 * 200, 200 + 600)
    assert figures.ignored == 3
    assert figures.loss_pct == 75.0
    assert figures.detail == "2 not sent"
    assert ip_bytes(172) == 200


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(sent=0, rtts_s=[]), "at least 1"),
        (dict(sent=3, rtts_s=[0.1, 0.1]), "2 entries for 3"),
        (dict(sent=2, rtts_s=[0.1, -0.001]), "negative"),
        (dict(sent=2, rtts_s=[0.1, math.nan]), "negative"),
        (dict(sent=2, rtts_s=[0.1, 0.1], codec="opus"), "unknown codec"),
        (dict(sent=2, rtts_s=[0.1, 0.1], datagrams_sent=1), "more echoes"),
        (dict(sent=2, rtts_s=[0.1, 0.1], datagrams_sent=3), "between 0 and sent"),
    ],
)
def test_round_trip_figures_reject_nonsense(kwargs: dict, message: str) -> None:
    args = {"datagram_bytes": 172, "codec": "g711", **kwargs}
    with pytest.raises(ValueError, match=message):
        round_trip_figures(**args)


@pytest.mark.parametrize(
    ("values", "pct", "expected"),
    [
        ([5.0], 90, 5.0),
        ([3.0, 1.0, 2.0], 50, 2.0),
        ([1.0, 2.0, 3.0, 4.0], 50, 2.0),
        (list(map(float, range(1, 51))), 90, 45.0),
        (list(map(float, range(1, 11))), 100, 10.0),
    ],
)
def test_nearest_rank(values: list[float], pct: float, expected: float) -> None:
    assert nearest_rank(values, pct) == expected


def test_jitter_needs_two_replies() -> None:
    assert successive_difference_jitter_ms([]) is None
    assert successive_difference_jitter_ms([12.0]) is None
    assert successive_difference_jitter_ms([12.0, 15.0, 11.0]) == pytest.approx(3.5)


# -- capacity ------------------------------------------------------------------------

KBIT_PER_GAP = 1200 * 8 / 1000  # one 1200 B packet: 9.6 kbit


def _spaced(n: int, gap_s: float, start_s: float = 0.0) -> list[float]:
    return [start_s + i * gap_s for i in range(n)]


# (case, packets_sent, arrivals_s, keyword args, expected fields)
CAPACITY = [
    (
        "40 packets 2 ms apart: 39 x 9.6 kbit in 78 ms = 4800 kbit/s, 53 calls of 90",
        40,
        _spaced(40, 0.002),
        {},
        dict(
            packets_received=40,
            rate_kbps=4800.0,
            calls=53,
            at_least=False,
            bytes_sent=48_000,
            bytes_received=48_000,
        ),
    ),
    (
        "the same train at 70 kbit/s a call: 68 calls",
        40,
        _spaced(40, 0.002),
        dict(call_kbps=70.0),
        dict(rate_kbps=4800.0, calls=68, at_least=False),
    ),
    (
        "5 of 10 back, 10 ms apart: 4 x 9.6 kbit in 40 ms = 960 kbit/s, 10 calls",
        10,
        _spaced(5, 0.010),
        {},
        dict(
            packets_received=5,
            rate_kbps=960.0,
            calls=10,
            at_least=False,
            bytes_sent=12_000,
            bytes_received=6_000,
        ),
    ),
    (
        "arrival order does not matter",
        3,
        [500.02, 500.0, 500.01],
        {},
        dict(rate_kbps=2 * KBIT_PER_GAP / 0.02, calls=10, at_least=False),
    ),
    (
        "spread below 1 ms: a lower bound over 1 ms (the last 30: 29 x 9.6 kbit / 1 ms)",
        40,
        _spaced(40, 0.00001),
        {},
        dict(rate_kbps=278_400.0, calls=3093, at_least=True),
    ),
    (
        "a shaper's burst lets 10 through at once; the tail's 10 ms spacing is the rate",
        40,
        [i * 0.0001 for i in range(10)] + [0.001 + i * 0.01 for i in range(30)],
        {},
        dict(rate_kbps=KBIT_PER_GAP / 0.01, calls=10, at_least=False),
    ),
    (
        "all at one instant: still a lower bound, not a division by zero",
        4,
        [500.0] * 4,
        {},
        dict(rate_kbps=3 * KBIT_PER_GAP / 0.001, calls=320, at_least=True),
    ),
    (
        "exactly the resolution: measured, not a bound",
        2,
        [0.0, 0.001],
        {},
        dict(rate_kbps=9600.0, calls=106, at_least=False),
    ),
    (
        "no more spread than the sender took: the sender set the pace, a lower bound",
        # 39 x 9.6 kbit over the 1.5 ms measured, reported as at least that.
        40,
        _spaced(40, 0.0015 / 39),
        dict(send_span_s=0.0019),
        dict(rate_kbps=249_600.0, calls=2773, at_least=True),
    ),
    (
        "spread well past the sender's span: measured",
        40,
        _spaced(40, 0.002),
        dict(send_span_s=0.0005),
        dict(rate_kbps=4800.0, calls=53, at_least=False),
    ),
    (
        "one packet back: no rate",
        40,
        [500.0],
        {},
        dict(packets_received=1, rate_kbps=None, calls=None, at_least=False, bytes_received=1200),
    ),
    (
        "nothing back",
        40,
        [],
        dict(datagrams_sent=0, detail="no reply from 192.0.2.10:7"),
        dict(
            packets_received=0,
            rate_kbps=None,
            calls=None,
            bytes_sent=0,
            bytes_received=0,
            detail="no reply from 192.0.2.10:7",
        ),
    ),
    (
        "strays count in the bytes received",
        2,
        [500.0, 500.01],
        dict(ignored=1, ignored_bytes=1200),
        dict(packets_received=2, bytes_received=3600, ignored=1),
    ),
    (
        "a link too slow for one call: 9.6 kbit in 0.2 s = 48 kbit/s",
        2,
        [500.0, 500.2],
        {},
        dict(rate_kbps=48.0, calls=0, at_least=False),
    ),
]


@pytest.mark.parametrize(
    ("case", "sent", "arrivals", "kwargs", "expected"), CAPACITY, ids=[row[0] for row in CAPACITY]
)
def test_capacity_figures(
    case: str, sent: int, arrivals: list[float], kwargs: dict, expected: dict
) -> None:
    figures = capacity_figures(sent, arrivals, 1200, **kwargs)
    assert isinstance(figures, CapacityFigures)
    assert figures.packets_sent == sent and figures.packet_bytes == 1200
    for name, want in expected.items():
        got = getattr(figures, name)
        if isinstance(want, float):
            assert got == pytest.approx(want), name
        else:
            assert got == want, name


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(packets_sent=0, arrivals_s=[]), "at least 1"),
        (dict(packets_sent=1, arrivals_s=[1.0, 2.0]), "more packets"),
        (dict(packets_sent=2, arrivals_s=[], packet_bytes=20), "IP size"),
        (dict(packets_sent=2, arrivals_s=[], call_kbps=0.0), "positive"),
        (dict(packets_sent=2, arrivals_s=[], resolution_s=0.0), "positive"),
        (dict(packets_sent=2, arrivals_s=[], datagrams_sent=3), "between 0"),
    ],
)
def test_capacity_figures_reject_nonsense(kwargs: dict, message: str) -> None:
    args = {"packet_bytes": 1200, **kwargs}
    with pytest.raises(ValueError, match=message):
        capacity_figures(**args)


def test_figures_are_frozen() -> None:
    figures = round_trip_figures(1, [0.01], 172, "g711")
    assert isinstance(figures, RoundTripFigures)
    with pytest.raises(AttributeError):
        figures.sent = 2  # type: ignore[misc]
