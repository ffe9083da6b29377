"""Pure judgements of the installer test's measurements: the switch, SIP, voice and
capacity over LTE, the guard, the failback. Facts in, one `StepResult` out; no I/O.
`agent.installer.judge` gathers these and the pre-checks under one name.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from agent.installer.echo_figures import CapacityFigures, RoundTripFigures
from agent.installer.report import StepResult, failed, passed, warned
from drivers.types import (
    ProbeResult,
    RouterState,
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
