"""The installer test's judgements, report and rendering, from tables (no I/O)."""

from __future__ import annotations

import json

import pytest

from agent.coverage import Coverage, Grade
from agent.installer import judge, render
from agent.installer.echo_figures import CapacityFigures, RoundTripFigures
from agent.installer.report import (
    STEPS,
    StepStatus,
    TestReport,
    TestVerdict,
    event_summary,
    failed,
    passed,
    skipped,
    verdict_of,
    warned,
)
from agent.location import SiteBaseline
from drivers.types import (
    ModemIdentity,
    ProbeResult,
    Registration,
    RouterIdentity,
    RouterState,
    SignalReport,
    SimState,
    VoipPath,
)

LIMITS = judge.Thresholds(warn_mos=3.6, fail_mos=3.1, expected_calls=2, warn_switch_ms=2000)


def _state(**kw: object) -> RouterState:
    base: dict[str, object] = {"policy_installed": True, "voip_path": VoipPath.PRIMARY}
    base.update(kw)
    return RouterState(**base)  # type: ignore[arg-type]


def _rt(mos: float | None, received: int = 50, loss: float = 0.0) -> RoundTripFigures:
    return RoundTripFigures(
        sent=50,
        received=received,
        loss_pct=loss,
        rtt_ms=40.0,
        rtt_p90_ms=45.0,
        jitter_ms=2.0,
        mos=mos,
        r_factor=None,
        bytes_sent=10_000,
        bytes_received=10_000,
        detail=None if received else "no reply from 192.0.2.10:7",
    )


# -- the verdict -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("statuses", "verdict"),
    [
        ([StepStatus.PASS, StepStatus.PASS], TestVerdict.PASS),
        ([StepStatus.PASS, StepStatus.WARN], TestVerdict.WARN),
        ([StepStatus.WARN, StepStatus.FAIL, StepStatus.SKIP], TestVerdict.FAIL),
        ([StepStatus.PASS, StepStatus.SKIP], TestVerdict.PASS),
    ],
)
def test_verdict_is_the_worst_step(statuses: list[StepStatus], verdict: TestVerdict) -> None:
    steps = [
        {
            StepStatus.PASS: passed("router", "ok"),
            StepStatus.WARN: warned("router", "meh", "do this"),
            StepStatus.FAIL: failed("router", "bad", "do that"),
            StepStatus.SKIP: skipped("router", "not run"),
        }[s]
        for s in statuses
    ]
    assert verdict_of(steps) is verdict


def test_every_failure_and_warning_carries_a_remedy_and_the_json_has_the_contract() -> None:
    report = TestReport(
        verdict=TestVerdict.FAIL,
        steps=(passed("router", "ok"), failed("sip_lte", "0 of 2", "check the APN")),
        device_id="site-1",
        started_wall_s=1.0,
        duration_s=3.2,
        lte_test_bytes=1000,
        lte_interface_bytes=1200,
        max_lte_bytes=500_000,
        max_duration_s=120.0,
        requested_by="installer",
    )
    data = json.loads(json.dumps(report.to_dict()))
    assert data["verdict"] == "FAIL"
    assert [s["name"] for s in data["steps"]] == ["router", "sip_lte"]
    assert data["steps"][1]["remedy"] == "check the APN"
    assert "remedy" not in data["steps"][0]
    assert data["counts"] == {"pass": 1, "warn": 0, "fail": 1, "skip": 0}
    event = event_summary(data)
    assert event["steps"][1] == {
        "name": "sip_lte",
        "status": "fail",
        "figure": "0 of 2",
        "remedy": "check the APN",
    }
    assert "figures" not in event["steps"][0]


def test_step_names_are_unique_and_titled() -> None:
    names = [name for name, _ in STEPS]
    assert len(names) == len(set(names))
    assert all(title for _, title in STEPS)


# -- pre-checks ---------------------------------------------------------------------------


def test_router_profile_missing_is_a_warning_naming_the_model() -> None:
    identity = RouterIdentity("HEX123", "RB9999", "site", "7.18")
    result = judge.router(_state(identity=identity, profile_matched=False), "routeros")
    assert result.status is StepStatus.WARN and "RB9999" in result.figure
    assert result.remedy
    line = "RB2011UiAS on routeros 7.18.2 (line 7): rb2011.toml, os-7.toml"
    ok = judge.router(_state(identity=identity, profile=line, profile_matched=True), "routeros")
    assert ok.status is StepStatus.PASS and ok.figure == line
    bare = judge.router(_state(identity=identity), "routeros")
    assert bare.figure == "RB9999, RouterOS 7.18"


@pytest.mark.parametrize(
    ("state", "status"),
    [
        (_state(), StepStatus.PASS),
        (_state(policy_installed=False), StepStatus.FAIL),
        (_state(drift=("the nftables table inet cpe_agent is missing",)), StepStatus.FAIL),
        (_state(voip_path=VoipPath.CELLULAR), StepStatus.FAIL),
        # The SIP helper has its own step: not counted twice.
        (_state(drift=("the SIP helper is enabled",), sip_helper_on=True), StepStatus.PASS),
    ],
)
def test_rules(state: RouterState, status: StepStatus) -> None:
    result = judge.rules(state)
    assert result.status is status
    assert (result.remedy is None) == (status is StepStatus.PASS)


@pytest.mark.parametrize(
    ("on", "driver", "status", "remedy_has"),
    [
        (False, "linux", StepStatus.PASS, None),
        (True, "routeros", StepStatus.FAIL, "service-port disable sip"),
        (True, "linux", StepStatus.FAIL, "nf_conntrack_helper"),
        (None, "linux", StepStatus.WARN, "by hand"),
    ],
)
def test_sip_helper(
    on: bool | None, driver: str, status: StepStatus, remedy_has: str | None
) -> None:
    result = judge.sip_helper(_state(sip_helper_on=on), driver)
    assert result.status is status
    if remedy_has:
        assert result.remedy and remedy_has in result.remedy


READY = SignalReport(
    registration=Registration.HOME,
    sim_state=SimState.READY,
    operator="T-Mobile",
    radio_on=True,
    source="at/quectel",
)


@pytest.mark.parametrize(
    ("report", "status", "says"),
    [
        (READY, StepStatus.PASS, "SIM ready"),
        (SignalReport(sim_state=SimState.ABSENT), StepStatus.FAIL, "no SIM card"),
        (SignalReport(sim_state=SimState.PIN_REQUIRED), StepStatus.FAIL, "PIN"),
        (SignalReport(sim_state=SimState.READY, radio_on=False), StepStatus.FAIL, "radio"),
        (
            SignalReport(sim_state=SimState.READY, registration=Registration.DENIED),
            StepStatus.FAIL,
            "refused",
        ),
        (
            SignalReport(sim_state=SimState.READY, registration=Registration.SEARCHING),
            StepStatus.FAIL,
            "not registered (searching)",
        ),
        (None, StepStatus.FAIL, "does not answer"),
    ],
)
def test_modem(report: SignalReport | None, status: StepStatus, says: str) -> None:
    result = judge.modem(report, ModemIdentity("Quectel", "EC25"), "timeout")
    assert result.status is status
    assert says in result.figure
    if status is StepStatus.FAIL:
        assert result.remedy


@pytest.mark.parametrize(
    ("grade", "status"),
    [
        (Grade.EXCELLENT, StepStatus.PASS),
        (Grade.GOOD, StepStatus.PASS),
        (Grade.FAIR, StepStatus.WARN),
        (Grade.POOR, StepStatus.WARN),
        (Grade.NO_SERVICE, StepStatus.FAIL),
    ],
)
def test_coverage(grade: Grade, status: StepStatus) -> None:
    report = SignalReport(rsrp_dbm=-95, sinr_db=8.0)
    result = judge.coverage(report, Coverage(grade, "rsrp_dbm"))
    assert result.status is status
    if status is not StepStatus.FAIL:
        assert "RSRP -95 dBm" in result.figure and "SINR 8.0 dB" in result.figure


def test_location() -> None:
    assert judge.location(None, watched=True).status is StepStatus.WARN
    assert "cpe-agent location record" in (judge.location(None, watched=True).remedy or "")
    recorded = SiteBaseline(plmns=frozenset({"310260"}), cell_ids=frozenset({1, 2}), samples=6)
    result = judge.location(recorded, watched=True)
    assert result.status is StepStatus.PASS and "2 cells" in result.figure


@pytest.mark.parametrize(
    ("active", "force", "status"),
    [(0, False, StepStatus.PASS), (1, False, StepStatus.FAIL), (2, True, StepStatus.WARN)],
)
def test_calls(active: int, force: bool, status: StepStatus) -> None:
    result = judge.calls(active, force)
    assert result.status is status
    if status is StepStatus.FAIL:
        assert "--force" in (result.remedy or "")


@pytest.mark.parametrize(
    ("mode", "verdict", "refused"),
    [
        ("primary", "up", False),
        ("degraded", "degraded", False),
        ("primary", "down", True),
        ("cellular", "down", True),
        ("recovering", "up", True),
        ("both_down", "down", True),
    ],
)
def test_normal_state(mode: str, verdict: str, refused: bool) -> None:
    assert (judge.normal_state(mode, verdict) is not None) is refused


# -- measurements --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("figures", "status"),
    [
        (_rt(4.3), StepStatus.PASS),
        (_rt(3.4), StepStatus.WARN),
        (_rt(2.9), StepStatus.FAIL),
        (_rt(None, received=0, loss=100.0), StepStatus.WARN),
        (None, StepStatus.WARN),
    ],
)
def test_voice(figures: RoundTripFigures | None, status: StepStatus) -> None:
    result = judge.voice("voice_lte", "LTE", figures, "192.0.2.10:7", LIMITS)
    assert result.status is status
    if figures is not None and figures.received:
        assert f"MOS {figures.mos:.2f}" in result.figure
    elif status is StepStatus.WARN:
        assert "echo" in (result.remedy or "")


def test_sip_over_lte() -> None:
    up = ProbeResult("192.0.2.10", "sip", True, rtt_s=0.048)
    down = ProbeResult("192.0.2.11", "sip", False, detail="timeout")
    assert judge.sip_over_lte([up, up]).status is StepStatus.PASS
    some = judge.sip_over_lte([up, down])
    assert some.status is StepStatus.WARN and "1 of 2" in some.figure and "48 ms" in some.figure
    none = judge.sip_over_lte([down, down])
    assert none.status is StepStatus.FAIL and "APN" in (none.remedy or "")


def _cap(calls: int | None, rate: float | None, at_least: bool = False) -> CapacityFigures:
    return CapacityFigures(
        packets_sent=40,
        packets_received=40 if rate else 0,
        packet_bytes=1200,
        bytes_sent=48_000,
        bytes_received=48_000 if rate else 0,
        rate_kbps=rate,
        calls=calls,
        at_least=at_least,
        call_kbps=90.0,
    )


@pytest.mark.parametrize(
    ("figures", "sip_ok", "status", "says"),
    [
        (_cap(11, 1000.0), True, StepStatus.PASS, "11 simultaneous calls"),
        (_cap(1, 120.0), True, StepStatus.WARN, "1 simultaneous calls"),
        (_cap(0, 50.0), True, StepStatus.FAIL, "0 simultaneous"),
        (_cap(500, 45_000.0, at_least=True), True, StepStatus.PASS, "at least 500"),
        (_cap(None, None), True, StepStatus.WARN, "no UDP echo"),
        (_cap(None, None), False, StepStatus.FAIL, "nothing answers"),
    ],
)
def test_capacity(figures: CapacityFigures, sip_ok: bool, status: StepStatus, says: str) -> None:
    result = judge.capacity(figures, LIMITS, sip_ok)
    assert result.status is status
    assert says in result.figure


def test_switch_and_failback() -> None:
    ok = judge.switch("test", 38.0, VoipPath.CELLULAR, 3, LIMITS)
    assert ok.status is StepStatus.PASS and "38 ms" in ok.figure
    slow = judge.switch("test", 2500.0, VoipPath.CELLULAR, 0, LIMITS)
    assert slow.status is StepStatus.WARN
    assert judge.switch(None, None, VoipPath.PRIMARY, 0, LIMITS).status is StepStatus.FAIL
    back = judge.failback("primary", 20.0, VoipPath.PRIMARY, 2)
    assert back.status is StepStatus.PASS
    stuck = judge.failback("cellular", 15.0, VoipPath.CELLULAR, 0)
    assert stuck.status is StepStatus.FAIL and "primary was down" in stuck.figure
    assert judge.failback(None, None, None, 0, error="timeout").status is StepStatus.FAIL


def test_guard_counts_what_it_stopped_during_the_test() -> None:
    result = judge.guard(_state(blocked_packets=12, voip_path=VoipPath.CELLULAR), 10)
    assert result.status is StepStatus.PASS and "2 during the test" in result.figure
    assert judge.guard(_state(policy_installed=False), 0).status is StepStatus.FAIL


# -- what a person sees ---------------------------------------------------------------------


def test_render_and_exit_codes() -> None:
    step = failed("sip_lte", "0 of 2 answered", "check the APN").to_dict()
    lines = render.step_lines(step)
    assert lines[0].startswith("  [FAIL] SBCs answer SIP over LTE: 0 of 2")
    assert lines[1].strip() == "-> check the APN"
    report = {
        "verdict": "FAIL",
        "counts": {"fail": 1},
        "steps": [step],
        "duration_s": 4.0,
        "lte_test_bytes": 1000,
        "max_lte_bytes": 500_000,
        "voip_path_after": "primary",
    }
    text = "\n".join(render.summary_lines(report))
    assert "Verdict: FAIL" in text and "To do: check the APN." in text
    assert render.exit_code(report) == render.EXIT_FAIL
    assert render.exit_code({**report, "verdict": "PASS"}) == render.EXIT_PASS
    assert render.exit_code({**report, "verdict": "WARN"}) == render.EXIT_WARN
    assert render.exit_code({**report, "refused": True}) == render.EXIT_REFUSED
    assert render.exit_code({**report, "interrupted": True}, cancelled_here=True) == 130
