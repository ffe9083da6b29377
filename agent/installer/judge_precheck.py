"""Pure judgements of the installer test's pre-checks: router, rules, SIP helper, modem,
coverage, location, calls, the site's state. Facts in, one `StepResult` out; no I/O.
`agent.installer.judge` gathers these and the measurements under one name.
"""

from __future__ import annotations

from typing import Any

from agent.coverage import Coverage, Grade
from agent.installer.judge_measure import RESTART_AGENT
from agent.installer.report import StepResult, failed, passed, warned
from agent.location import SiteBaseline
from drivers.types import (
    ModemIdentity,
    Registration,
    RouterState,
    SignalReport,
    SimState,
    VoipPath,
)

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
    units = {"dbm": "dBm", "db": "dB"}
    shown = ", ".join(
        f"{k.split('_')[0].upper()} {v} {units[k.split('_')[1]]}"
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
