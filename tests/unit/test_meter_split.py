"""The LTE split (VoIP, the agent's own traffic, blocked), from tables: running totals
that restart on their own turned into deltas, the figures reported, and the service
taking them from the router's state and from the MQTT client."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.meter import split
from agent.meter.books import Totals
from agent.meter.report import render, split_figures, telemetry_figures
from agent.meter.split import Tracker, advance
from drivers.types import RouterState
from tests.unit.test_meter_service import Harness

# (totals seen in order, from_zero, bytes counted after each)
ADVANCE_ROWS = [
    pytest.param([100, 250, 400], False, [0, 150, 150], id="baseline-then-steady"),
    pytest.param([100, 250, 400], True, [100, 150, 150], id="from-zero-counts-the-first"),
    pytest.param([500, 700, 40, 90], False, [0, 200, 40, 50], id="restart-is-all-new"),
    pytest.param([500, 0, 0, 10], False, [0, 0, 0, 10], id="restart-to-zero"),
    pytest.param([None, 100, 180], False, [0, 0, 80], id="unknown-before-the-first"),
    pytest.param([100, None, 160], False, [0, 0, 60], id="unknown-between-keeps-the-last"),
    pytest.param([100, None, 30], False, [0, 0, 30], id="back-after-a-restart"),
    pytest.param([700, 700, 700], False, [0, 0, 0], id="idle"),
    pytest.param([-5, 20], False, [0, 20], id="negative-read-as-zero"),
    pytest.param([3000, 1000, 1500], True, [3000, 1000, 500], id="new-mqtt-client"),
]


@pytest.mark.parametrize(("totals", "from_zero", "expected"), ADVANCE_ROWS)
def test_advance(totals: list[int | None], from_zero: bool, expected: list[int]) -> None:
    tracker = Tracker()
    counted = []
    for total in totals:
        tracker, moved = advance(tracker, total, from_zero=from_zero)
        counted.append(moved)
    assert counted == expected
    assert tracker.known is any(t is not None for t in totals)


def test_advance_never_known_stays_unknown() -> None:
    tracker, moved = split.advance(Tracker(), None)
    assert (tracker, moved) == (Tracker(), 0)


T = Totals(rx_ip_bytes=6000, tx_ip_bytes=4000, voice_bytes=7000, agent_bytes=1000,
           agent_mqtt_bytes=900, blocked_bytes=300, idle_ip_bytes=50)  # fmt: skip

# (totals, voice_known, agent_known, mqtt_known) -> (voice, agent, mqtt, other)
FIGURE_ROWS = [
    pytest.param(T, True, True, True, (7000, 1000, 900, 2000), id="all-known"),
    pytest.param(T, None, None, None, (7000, 1000, 900, 2000), id="judged-from-totals"),
    pytest.param(T, False, False, True, (None, None, 900, None), id="driver-cannot-tell"),
    pytest.param(T, True, False, None, (7000, None, 900, None), id="agent-unknown"),
    pytest.param(Totals(), True, True, True, (0, 0, 0, 0), id="known-zero-is-zero"),
    pytest.param(Totals(), None, None, None, (None, None, None, None), id="unknown-never-0"),
    pytest.param(None, None, None, None, (None, None, None, None), id="no-cycle"),
    pytest.param(
        Totals(rx_ip_bytes=100, voice_bytes=150), True, True, None, (150, 0, None, 0),
        id="other-never-negative",
    ),
]


@pytest.mark.parametrize(("totals", "voice", "agent", "mqtt", "expected"), FIGURE_ROWS)
def test_split_figures(
    totals: Totals | None,
    voice: bool | None,
    agent: bool | None,
    mqtt: bool | None,
    expected: tuple[int | None, ...],
) -> None:
    figures = split_figures(totals, voice_known=voice, agent_known=agent, mqtt_known=mqtt)
    got = tuple(figures[k] for k in ("voice_bytes", "agent_bytes", "agent_mqtt_bytes",
                                     "other_bytes"))  # fmt: skip
    assert got == expected
    assert figures["blocked_bytes"] == (totals.blocked_bytes if totals else 0)


def test_totals_from_an_older_document_have_no_split() -> None:
    old = {"rx_ip_bytes": 5, "tx_ip_bytes": 6, "blocked_bytes": 7, "lte_s": 1.5}
    totals = Totals.from_json(old)
    assert (totals.voice_bytes, totals.agent_bytes, totals.agent_mqtt_bytes) == (0, 0, 0)
    assert Totals.from_json(totals.to_json()) == totals


async def test_meter_reports_the_split_from_router_and_mqtt_client(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    await h.meter.poll_once()
    h.counters.add(rx=9000, tx=6000)
    state = RouterState(True, None, blocked_bytes=100, voice_bytes=10_000, agent_bytes=2000)
    h.meter.note_router_state(state)  # the baseline: the router's history is not ours
    h.meter.note_agent_wire_bytes(700)  # the client started with this process: all counted
    h.meter.note_router_state(
        RouterState(True, None, blocked_bytes=400, voice_bytes=19_000, agent_bytes=3500)
    )
    h.meter.note_agent_wire_bytes(1200)
    await h.poll()
    snap = h.meter.snapshot()["split"]
    assert snap == {
        "voice_bytes": 9000,
        "agent_bytes": 1500,
        "agent_mqtt_bytes": 1200,
        "other_bytes": 15_000 - 9000 - 1500,
        "blocked_bytes": 300,
        "idle_ip_bytes": 0,
    }
    # The router rebooted (its totals restart) and the MQTT client was re-created.
    h.meter.note_router_state(RouterState(True, None, voice_bytes=600, agent_bytes=50))
    h.meter.note_agent_wire_bytes(80)
    await h.poll()
    snap = h.meter.snapshot()
    assert snap["split"]["voice_bytes"] == 9600
    assert snap["split"]["agent_bytes"] == 1550
    assert snap["split"]["agent_mqtt_bytes"] == 1280
    figures = h.meter.telemetry()
    assert figures["voice_bytes"] == 9600 and figures["agent_mqtt_bytes"] == 1280
    assert "Split     voice 0.01 MB, agent 0.00 MB" in render(snap)

    # Written, and read back by a new meter (a restart) from the books.
    h.meter.persist()
    h.meter.close()
    h.meter = h.new_meter()
    await h.meter.poll_once()
    assert h.meter.snapshot()["split"]["voice_bytes"] == 9600


async def test_a_driver_that_cannot_tell_leaves_voice_and_agent_unknown(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    await h.meter.poll_once()
    h.meter.note_router_state(RouterState(True, None, blocked_bytes=100))
    h.meter.note_router_state(RouterState(True, None, blocked_bytes=300))
    await h.poll()
    snap = h.meter.snapshot()
    assert snap["split"]["voice_bytes"] is None and snap["split"]["agent_bytes"] is None
    assert snap["split"]["other_bytes"] is None
    assert snap["split"]["agent_mqtt_bytes"] is None  # the app never handed it over
    assert snap["split"]["blocked_bytes"] == 200
    assert telemetry_figures(snap)["voice_bytes"] is None
    assert "voice unknown, agent unknown" in render(snap)
