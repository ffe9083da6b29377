"""Location guard from tables of samples: country, unknown cells, GNSS; persistence; return."""

from __future__ import annotations

import pytest

from agent.location import (
    GuardState,
    LocationPolicy,
    Sample,
    SiteBaseline,
    distance_m,
    observe,
    record,
)
from drivers.types import GnssFix, SignalReport

HOUR = 3600.0
POLICY = LocationPolicy()  # 6 samples and 2 h (cells, GNSS); 3 samples and 15 min (country)
SITE = (41.8781, -87.6298)


def baseline() -> SiteBaseline:
    b = SiteBaseline()
    for i, (tac, enb) in enumerate([(0x2B10, 662316), (0x2B10, 662317), (0x2B11, 662400)]):
        b = record(b, Sample(at_s=i * 60.0, mcc="310", mnc="260", tac=tac, enb_id=enb,
                             cell_id=enb * 256 + 1, gnss=(SITE[0] + i * 1e-5, SITE[1])))
    return b


def run(samples: list[Sample], b: SiteBaseline | None = None) -> tuple[GuardState, list]:
    state, events = GuardState(), []
    for s in samples:
        state, new = observe(b or baseline(), state, s, POLICY)
        events.extend(new)
    return state, events


def every(minutes: float, n: int, **fields) -> list[Sample]:
    return [Sample(at_s=1000.0 + i * minutes * 60, **fields) for i in range(n)]


def test_record_collects_the_site():
    b = baseline()
    assert b.plmns == frozenset({"310260"})
    assert b.tacs == frozenset({0x2B10, 0x2B11})
    assert b.enb_ids == frozenset({662316, 662317, 662400})
    assert b.gnss_fixes == 3 and distance_m(b.gnss, SITE) < 2
    assert SiteBaseline.from_dict(b.to_dict()) == b


def test_known_cells_raise_nothing():
    _, events = run(every(30, 20, mcc="310", mnc="260", tac=0x2B10, enb_id=662317))
    assert events == []


def test_a_new_cell_for_a_while_is_normal():
    """A neighbour cell for an hour (5 samples), then a known one: no event."""
    samples = every(15, 5, mcc="310", mnc="260", tac=0x2B10, enb_id=999999)
    samples.append(Sample(at_s=samples[-1].at_s + 900, mcc="310", tac=0x2B10, enb_id=662316))
    samples += [Sample(at_s=samples[-1].at_s + 900 * (i + 1), mcc="310", enb_id=999999)
                for i in range(5)]
    state, events = run(samples)
    assert events == [] and state.streak("cell").count == 5


def test_unknown_cells_that_persist_mean_relocated_once():
    samples = every(30, 12, mcc="310", mnc="260", tac=0x7777, enb_id=123456)
    state, events = run(samples)
    assert [(e.kind, e.reason) for e in events] == [("relocated", "cell")]
    e = events[0]
    assert e.at_s - e.detail["since_s"] >= 2 * HOUR and e.detail["samples"] >= 6
    assert e.detail["new_tac"] is True and e.detail["enb_id"] == 123456
    assert "cell" in state.raised


def test_many_samples_in_a_short_time_are_not_enough():
    _, events = run(every(1, 60, mcc="310", tac=0x7777, enb_id=123456))  # one hour
    assert events == []


def test_samples_without_a_cell_neither_count_nor_reset():
    moved = every(30, 3, mcc="310", enb_id=123456)
    blank = [Sample(at_s=moved[-1].at_s + 60)]
    later = [Sample(at_s=blank[0].at_s + 1800 * (i + 1), mcc="310", enb_id=123456)
             for i in range(4)]
    _, events = run(moved + blank + later)
    assert [e.reason for e in events] == ["cell"]


def test_return_to_the_site_is_reported():
    moved = every(30, 8, mcc="310", tac=0x7777, enb_id=123456)
    back = [Sample(at_s=moved[-1].at_s + 1800, mcc="310", tac=0x2B10, enb_id=662316)]
    state, events = run(moved + back)
    assert [(e.kind, e.reason) for e in events] == [("relocated", "cell"), ("returned", "cell")]
    assert state.raised == frozenset()


@pytest.mark.parametrize(
    ("mcc", "expected"),
    [("334", ["country"]), ("302", []), ("316", []), ("311", []), ("208", ["country"])],
)
def test_country(mcc, expected):
    # known cells, so only the MCC can raise anything
    _, events = run(every(10, 4, mcc=mcc, enb_id=662316))
    assert [e.reason for e in events] == expected


def test_one_foreign_network_sample_near_a_border_is_not_a_move():
    samples = every(10, 6, mcc="310", enb_id=662316)
    samples[2] = Sample(at_s=samples[2].at_s, mcc="334", enb_id=662316)
    _, events = run(samples)
    assert events == []


def test_gnss_beyond_radius():
    far = (SITE[0] + 0.05, SITE[1])  # ~5.6 km north
    _, events = run(every(30, 8, gnss=far))
    assert [e.reason for e in events] == ["gnss"]
    assert 5000 < events[0].detail["distance_m"] < 6000


def test_gnss_jitter_inside_radius():
    _, events = run(every(30, 8, gnss=(SITE[0] + 0.003, SITE[1])))  # ~330 m
    assert events == []


def test_custom_allowed_list_and_sample_from_report():
    policy = LocationPolicy(allowed_mccs=frozenset({"302"}), country_min_samples=1,
                            country_min_duration_s=0)
    report = SignalReport(mcc="310", mnc="260", tac=0x2B10, enb_id=662316)
    s = Sample.of(report, 5.0, GnssFix(41.0, -87.0))
    assert s.gnss == (41.0, -87.0) and s.enb_id == 662316
    _, events = observe(baseline(), GuardState(), s, policy)
    assert [e.reason for e in events] == ["country"]


def test_distance():
    assert distance_m((0.0, 0.0), (0.0, 1.0)) == pytest.approx(111_195, rel=1e-3)
    assert distance_m(SITE, SITE) == 0.0
