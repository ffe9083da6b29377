"""Pure judgements of the installer test: facts in, one `StepResult` out.

Each function turns what the runner read (the router's read-back, the modem's report,
round-trip figures ...) into a status, a line of figures and, when something is wrong,
one sentence of what to do. No I/O, no clock: tested from tables
(tests/unit/test_installer_judge.py), and docs/installer.md explains every remedy here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from agent.coverage import Coverage, Grade
from agent.installer.echo_figures import CapacityFigures, RoundTripFigures
from agent.installer.report import StepResult, failed, passed, warned
from agent.location import SiteBaseline
from drivers.types import (
    ModemIdentity,
    ProbeResult,
    Registration,
    RouterState,
    SignalReport,
    SimState,
    VoipPath,
)

RESTART_AGENT = (
    "restart the agent (systemctl restart cpe-agent) so it installs its rules again; "
    "if they go missing again, find what else edits the router"
)
ECHO_REMEDY = (
    "ask the provider for its UDP echo responder (RFC 862) or set [installer] echo_hosts; "
    "until then voice quality and capacity are not measured"
)


@dataclass(frozen=True)
class Thresholds:
    """The limits the test judges against (from [health] and [installer])."""

    warn_mos: float = 3.6
    fail_mos: float = 3.1
    expected_calls: int = 2
    warn_switch_ms: float = 2000.0


# -- pre-checks ----------------------------------------------------------------------


def router(state: RouterState, driver: str) -> StepResult:
    figures: dict[str, Any] = {"driver": driver, "profile": state.profile}
    identity = state.identity
    if identity is not None:
        figures.update(model=identity.model, os_version=identity.os_version)
    if driver == "linux":
        text = "this Linux router (nftables and policy routing)"
    elif state.profile:
        text = state.profile  # names the model, the RouterOS version and the profile files
    else:
        model = (identity.model if identity else None) or "unknown model"
        version = (identity.os_version if identity else None) or "unknown version"
        text = f"{model}, RouterOS {version}"
    if state.profile_matched is False:
        return warned(
            "router",
            text + " (no profile for this model: the OS line's defaults are used)"
            if not state.profile
            else text,
            "tell the provider this router model so a tested profile can be added; the "
            "defaults are safe but untested on it",
            **figures,
        )
    return passed("router", text, **figures)


def failed_router(error: str, remedy: str) -> StepResult:
    return failed("router", f"the router does not answer ({error})", remedy)


def rules(state: RouterState) -> StepResult:
    """Installed and in sync. The SIP helper has its own step, so it is left out here."""
    drift = [d for d in state.drift if "sip helper" not in d.lower()]
    figures = {"installed": state.policy_installed, "drift": drift}
    if not state.policy_installed:
        return failed(
            "rules", "none of the agent's rules are on the router", RESTART_AGENT, **figures
        )
    if drift:
        shown = "; ".join(drift[:2]) + (f" (+{len(drift) - 2} more)" if len(drift) > 2 else "")
        return failed("rules", f"out of step: {shown}", RESTART_AGENT, **figures)
    if state.voip_path is not VoipPath.PRIMARY:
        return failed(
            "rules",
            f"the router sends VoIP by {state.voip_path or 'no path'}, not the primary",
            RESTART_AGENT,
            **figures,
        )
    return passed("rules", "installed and in sync (read back from the router)", **figures)


def sip_helper(state: RouterState, driver: str) -> StepResult:
    on = state.sip_helper_on
    if on is None:
        return warned(
            "sip_helper",
            "this router cannot tell whether a SIP helper is on",
            "check by hand that no SIP ALG rewrites SIP on this router or the one in front",
            sip_helper_on=None,
        )
    if not on:
        return passed("sip_helper", "off", sip_helper_on=False)
    if driver == "routeros":
        remedy = (
            "turn the router's SIP helper off (/ip firewall service-port disable sip): it "
            "rewrites SIP and breaks registrations and audio"
        )
    else:
        remedy = (
            'remove the SIP conntrack helper (the nftables `ct helper` of type "sip", or '
            "sysctl net.netfilter.nf_conntrack_helper=0): it rewrites SIP and breaks calls"
        )
    return failed("sip_helper", "ON: the router rewrites SIP", remedy, sip_helper_on=True)


_SIM_PROBLEMS: dict[SimState, tuple[str, str]] = {
    SimState.ABSENT: (
        "no SIM card",
        "insert the provider's SIM (modem powered off), then run the test again",
    ),
    SimState.PIN_REQUIRED: (
        "the SIM asks for its PIN",
        "remove the SIM PIN (or set it in the modem) so the modem can register unattended",
    ),
    SimState.PUK_REQUIRED: (
        "the SIM is blocked (PUK)",
        "ask the provider for the PUK or a new SIM",
    ),
    SimState.LOCKED: (
        "the SIM is locked to another network",
        "use the provider's SIM in a modem unlocked for it",
    ),
    SimState.NOT_READY: (
        "the SIM is not ready yet",
        "wait a minute after power-up and run the test again; if it persists, reseat the SIM",
    ),
    SimState.FAILED: (
        "the SIM card failed",
        "reseat the SIM; if it still fails, ask the provider for a new one",
    ),
}


def modem(
    report: SignalReport | None, identity: ModemIdentity | None, error: str | None
) -> StepResult:
    """Present (it answers), SIM ready, radio on, registered."""
    if report is None:
        return failed(
            "modem",
            f"the modem does not answer ({error or 'no reply'})",
            "check the modem's power and its cable (USB or Ethernet), then run the test again",
        )
    name = " ".join(x for x in (identity.manufacturer, identity.model) if x) if identity else ""
    name = name or report.source or "modem"
    figures = {
        "sim_state": report.sim_state,
        "registration": report.registration.value,
        "operator": report.operator,
        "access_tech": report.access_tech,
        "source": report.source,
    }
    if report.sim_state in _SIM_PROBLEMS:
        text, remedy = _SIM_PROBLEMS[report.sim_state]
        return failed("modem", f"{name}: {text}", remedy, **figures)
    if report.radio_on is False:
        return failed(
            "modem",
            f"{name}: the radio is off",
            "turn the modem's radio on (AT+CFUN=1, or the modem's own page) and run the test again",
            **figures,
        )
    reg = report.registration
    if reg is Registration.DENIED:
        return failed(
            "modem",
            f"{name}: the network refused the SIM",
            "ask the provider to activate the SIM for data",
            **figures,
        )
    if not reg.registered:
        no_signal = report.rsrp_dbm is None and report.rssi_dbm is None
        return failed(
            "modem",
            f"{name}: not registered ({reg.value})" + (": no signal" if no_signal else ""),
            "check the antenna and that the SIM is activated; move the modem where the "
            "signal is better",
            **figures,
        )
    sim = "SIM ready" if report.sim_state is SimState.READY else "SIM state not reported"
    where = " ".join(str(x) for x in (report.operator, report.access_tech, report.band) if x)
    return passed("modem", f"{name}, {sim}, registered ({reg.value}) {where}".strip(), **figures)


def no_modem() -> StepResult:
    return warned(
        "modem",
        "no modem configured: SIM and signal not checked",
        "set [modem] in the config (docs/modems.md) so the agent watches the modem",
    )


def coverage(report: SignalReport | None, grade: Coverage | None) -> StepResult:
    if report is None or grade is None:
        return failed("coverage", "no report from the modem", "see the modem step")
    radio = {
        "rsrp_dbm": report.rsrp_dbm,
        "rsrq_db": report.rsrq_db,
        "sinr_db": report.sinr_db,
        "rssi_dbm": report.rssi_dbm,
        "band": report.band,
    }
    shown = ", ".join(
        f"{k.split('_')[0].upper()} {v} {k.split('_')[1]}"
        for k, v in radio.items()
        if v is not None and k != "band"
    )
    text = f"{grade.grade.value}" + (f" ({shown})" if shown else "")
    figures = {"grade": grade.grade.value, "limited_by": grade.limited_by, **radio}
    if grade.grade is Grade.NO_SERVICE:
        return failed(
            "coverage",
            f"no LTE signal ({grade.limited_by or 'no service'})",
            "move the modem or fit an external antenna (near a window, up high), "
            "then run the test again",
            **figures,
        )
    if grade.grade in (Grade.FAIR, Grade.POOR):
        return warned(
            "coverage",
            text,
            "calls may break up on LTE: move the modem or its "
            "antenna higher or nearer a window, or fit an external antenna",
            **figures,
        )
    return passed("coverage", text, **figures)


def location(baseline: SiteBaseline | None, watched: bool) -> StepResult:
    if not watched:
        return warned(
            "location",
            "not watched (no modem configured)",
            "set [modem] in the config so the location guard can work",
        )
    if baseline is None or baseline.samples == 0:
        return warned(
            "location",
            "not recorded",
            "record it now, at the business address: cpe-agent location record",
        )
    text = (
        f"{baseline.samples} samples, {len(baseline.cell_ids)} cells, "
        f"network {', '.join(sorted(baseline.plmns)) or 'unknown'}"
    )
    if baseline.gnss is not None:
        text += ", GNSS fix"
    return passed("location", text, samples=baseline.samples, cells=len(baseline.cell_ids))


def calls(active: int, force: bool) -> StepResult:
    if active == 0:
        return passed("calls", "none", active_calls=0)
    if force:
        return warned(
            "calls",
            f"{active} call(s) in progress; --force given: they drop now",
            "run the test when nobody is on the phone",
            active_calls=active,
        )
    return failed(
        "calls",
        f"{active} call(s) in progress: the test did not start",
        "wait until the call ends, or run again with --force (the call drops)",
        active_calls=active,
    )


def calls_unknown(error: str) -> StepResult:
    return failed(
        "calls",
        f"cannot count the calls in progress ({error})",
        "check the router (cpe-agent status), then run the test again",
    )


def normal_state(mode: str, primary_verdict: str) -> StepResult | None:
    """None when the site may be tested; otherwise the refusal for the primary's step."""
    if mode not in ("primary", "degraded"):
        return failed(
            "primary_voice",
            f"the site is on LTE now (mode {mode})",
            "fix the primary link first (cpe-agent status shows why), then run the test",
            mode=mode,
        )
    if primary_verdict == "down":
        return failed(
            "primary_voice",
            "the primary link is down",
            "fix the primary link first (cpe-agent status shows why)",
            mode=mode,
        )
    return None


# -- measurements --------------------------------------------------------------------


def voice(
    name: str, link: str, f: RoundTripFigures | None, target: str | None, limits: Thresholds
) -> StepResult:
    """Round trips of RTP-sized datagrams and the E-model MOS they give."""
    if f is None or f.received == 0 or f.mos is None:
        detail = (f.detail if f is not None else None) or "no reply"
        return warned(
            name, f"not measured: no UDP echo answered ({detail})", ECHO_REMEDY, target=target
        )
    figures = {
        "target": target,
        "sent": f.sent,
        "received": f.received,
        "loss_pct": round(f.loss_pct, 2),
        "rtt_ms": _r(f.rtt_ms),
        "jitter_ms": _r(f.jitter_ms),
        "mos": round(f.mos, 2),
        "bytes": f.bytes_sent + f.bytes_received,
    }
    text = (
        f"MOS {f.mos:.2f}: {_r(f.rtt_ms)} ms round trip, jitter {_r(f.jitter_ms)} ms, "
        f"loss {f.loss_pct:.1f} % ({f.received}/{f.sent})"
    )
    if f.mos < limits.fail_mos:
        return failed(
            name, text, f"calls on the {link} would be poor: " + _link_remedy(link), **figures
        )
    if f.mos < limits.warn_mos:
        return warned(
            name, text, f"calls on the {link} may suffer: " + _link_remedy(link), **figures
        )
    return passed(name, text, **figures)


def _link_remedy(link: str) -> str:
    if link == "LTE":
        return "improve the modem's signal (placement, external antenna)"
    return "ask the internet provider about loss and delay on the line"


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def nothing_over_lte(name: str) -> StepResult:
    return failed(
        name, "nothing answers over LTE", "see the SBC step: LTE does not reach the provider"
    )


def budget_spent(used: int, budget: int) -> StepResult:
    return warned(
        "capacity_lte",
        f"not measured: {used} of the {budget} LTE bytes allowed are spent",
        "raise [installer] max_lte_bytes to measure the capacity",
        bytes_used=used,
        max_lte_bytes=budget,
    )


def sip_over_lte(results: Sequence[ProbeResult]) -> StepResult:
    answered = [r for r in results if r.answered]
    parts = [
        f"{r.target} {round(r.rtt_s * 1000)} ms"
        if r.answered and r.rtt_s is not None
        else f"{r.target} {r.detail or 'no answer'}"
        for r in results
    ]
    figures = {
        "answered": len(answered),
        "total": len(results),
        "sbcs": {r.target: (round(r.rtt_s * 1000, 1) if r.rtt_s else None) for r in results},
    }
    text = f"{len(answered)} of {len(results)} answered: " + ", ".join(parts)
    if not answered:
        return failed(
            "sip_lte",
            text,
            "the SBCs cannot be reached over LTE: check the "
            "modem's APN and ask the provider whether the SIM may reach the SBCs",
            **figures,
        )
    if len(answered) < len(results):
        return warned(
            "sip_lte",
            text,
            "one SBC does not answer over LTE: phones fail over "
            "to the others; tell the provider which",
            **figures,
        )
    return passed("sip_lte", text, **figures)


def capacity(f: CapacityFigures | None, limits: Thresholds, sip_ok: bool) -> StepResult:
    if f is None or f.rate_kbps is None or f.calls is None:
        if not sip_ok:
            return failed(
                "capacity_lte", "not measured: nothing answers over LTE", "see the SBC step"
            )
        return warned("capacity_lte", "not measured: no UDP echo answered", ECHO_REMEDY)
    bound = "at least " if f.at_least else ""
    figures = {
        "rate_kbps": round(f.rate_kbps),
        "calls": f.calls,
        "at_least": f.at_least,
        "call_kbps": f.call_kbps,
        "bytes": f.bytes_sent + f.bytes_received,
        "packets": f.packets_sent,
    }
    text = (
        f"{bound}{f.calls} simultaneous calls ({bound}{round(f.rate_kbps)} kbit/s at "
        f"{f.call_kbps:g} kbit/s a call; {f.bytes_sent + f.bytes_received} bytes used)"
    )
    if f.calls < 1:
        return failed(
            "capacity_lte",
            text,
            "LTE cannot carry one call: improve the signal "
            "(placement, external antenna) or ask the provider about the plan's "
            "speed",
            **figures,
        )
    if f.calls < limits.expected_calls:
        return warned(
            "capacity_lte",
            text,
            f"fewer than the {limits.expected_calls} calls "
            "expected at this site: improve the signal, or expect busy tones "
            "during an outage",
            **figures,
        )
    return passed("capacity_lte", text, **figures)


def switch(
    to_mode: str | None,
    switch_ms: float | None,
    path: VoipPath | None,
    flushed: int,
    limits: Thresholds,
    error: str | None = None,
) -> StepResult:
    figures = {
        "switch_ms": switch_ms,
        "conntrack_flushed": flushed,
        "voip_path": path.value if path else None,
    }
    if to_mode != "test" or path is not VoipPath.CELLULAR:
        why = error or f"VoIP path read back: {path.value if path else 'none'}"
        return failed(
            "switch_to_lte",
            f"the router did not move VoIP to LTE ({why})",
            "check the router (cpe-agent status shows drift), then run the test again",
            **figures,
        )
    text = (
        f"in {switch_ms or 0:.0f} ms (read back from the router); {flushed} SIP/RTP "
        "connections reset so phones re-register by LTE at once"
    )
    if switch_ms is not None and switch_ms > limits.warn_switch_ms:
        return warned(
            "switch_to_lte",
            text,
            "the router is slow to answer: check its CPU load and the link to it",
            **figures,
        )
    return passed("switch_to_lte", text, **figures)


def guard(state: RouterState, blocked_before: int) -> StepResult:
    during = max(0, state.blocked_packets - blocked_before)
    figures = {
        "installed": state.policy_installed,
        "blocked_packets": state.blocked_packets,
        "blocked_bytes": state.blocked_bytes,
        "blocked_during_test": during,
    }
    drift = [d for d in state.drift if "sip helper" not in d.lower()]
    if not state.policy_installed or drift:
        return failed(
            "guard_lte",
            "the rule that keeps non-VoIP traffic off LTE is not in place",
            RESTART_AGENT,
            **figures,
        )
    return passed(
        "guard_lte",
        f"the drop rule for non-VoIP on LTE is in place (read back); it stopped "
        f"{state.blocked_packets} packets so far, {during} during the test",
        **figures,
    )


def failback(
    to_mode: str | None,
    switch_ms: float | None,
    path: VoipPath | None,
    flushed: int,
    error: str | None = None,
) -> StepResult:
    figures = {
        "to_mode": to_mode,
        "switch_ms": switch_ms,
        "conntrack_flushed": flushed,
        "voip_path": path.value if path else None,
    }
    if error is not None:
        return failed(
            "failback",
            f"the router did not take VoIP back ({error})",
            "check the router now (cpe-agent status); the agent keeps retrying",
            **figures,
        )
    if to_mode == "cellular":
        return failed(
            "failback",
            "the primary was down at the end: VoIP stays on LTE",
            "check the primary link (cable, modem, internet provider); the agent "
            "moves VoIP back by itself once the primary is healthy",
            **figures,
        )
    if to_mode != "primary" or path is not VoipPath.PRIMARY:
        shown = path.value if path else "unknown"
        return failed(
            "failback",
            f"VoIP is not back on the primary (path {shown})",
            "check the router (cpe-agent status), then restart the agent",
            **figures,
        )
    return passed(
        "failback",
        f"in {switch_ms or 0:.0f} ms; {flushed} SIP/RTP connections "
        "reset (phones re-register by the primary)",
        **figures,
    )


def primary_again(results: Sequence[ProbeResult], echo: RoundTripFigures | None) -> StepResult:
    answered = sum(1 for r in results if r.answered)
    figures = {
        "sip_answered": answered,
        "sip_total": len(results),
        "echo_received": echo.received if echo else None,
    }
    text = f"{answered} of {len(results)} SBCs answer SIP by the primary"
    if echo is not None and echo.received:
        text += f"; echo {echo.received}/{echo.sent}, {_r(echo.rtt_ms)} ms"
    if results and answered == 0:
        return failed(
            "primary_again",
            text,
            "the primary does not reach the SBCs after "
            "the test: check the primary link, then run cpe-agent status",
            **figures,
        )
    return passed("primary_again", text, **figures)
