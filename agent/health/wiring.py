"""Builds the health monitor from the settings: which probes, bound to which link.

Kept apart from `app.py` so the composition root stays short, and apart from the
monitor so the monitor stays free of configuration details.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from agent.clock import Clock
from agent.config import LinkSection, Settings
from agent.health.monitor import LinkSpec, Monitor
from agent.health.probes import IcmpProber, SipOptionsProber
from agent.health.scoring import HealthPolicy, LinkAssessment, cellular_better_for_voice
from drivers.errors import DriverError
from drivers.router.base import RouterPinger
from drivers.types import ProbeResult, VoipPath


def health_policy(settings: Settings) -> HealthPolicy:
    h = settings.health
    return HealthPolicy(
        window_s=h.window_s,
        down_after_s=h.down_after_s,
        min_targets_up=h.min_targets_up,
        degraded_loss_pct=h.degraded_loss_pct,
        degraded_rtt_ms=h.degraded_rtt_ms,
        degraded_jitter_ms=h.degraded_jitter_ms,
        degraded_mos=h.degraded_mos,
        codec=h.codec,
        sip_required=h.sip_required,
    )


class RouterPingProber:
    """ICMP run by the router itself, for an agent that is not on the router: the
    router's `/ping` by the link's routing table stands in for a socket bound to it."""

    def __init__(self, router: RouterPinger, via: VoipPath) -> None:
        self.router = router
        self.via = via

    async def probe(self, target: str, timeout_s: float | None = None) -> ProbeResult:
        try:
            results = await self.router.ping(target, self.via, 1)
        except DriverError as exc:
            return ProbeResult(target, "icmp", False, detail=f"router ping failed: {exc}")
        if not results:
            return ProbeResult(target, "icmp", False, detail="the router returned no reply")
        return results[0]

    def close(self) -> None:
        """Nothing to close: the router driver owns the session."""


def link_settings(settings: Settings, role: str) -> LinkSection:
    return settings.links.primary if role == "primary" else settings.links.cellular


def link_source(link: LinkSection, role: str, found: dict[str, str | None]) -> str | None:
    """The address a socket for this link binds: the configured one, else the one the
    router reported for the link's interface at start."""
    return str(link.source_address) if link.source_address else found.get(role)


def build_monitor(
    settings: Settings,
    clock: Clock,
    on_assessment: Callable[[str, LinkAssessment], None],
    source_addresses: dict[str, str | None],
    router: object | None = None,
) -> Monitor:
    """One LinkSpec per role; each link's probes bound to its device and source address.

    Binding both matters: the device keeps the primary's probes off LTE even in
    failover, and the source address selects the cellular routing table (the driver
    installs `from <LTE address> lookup <cellular table>`).
    """
    policy = health_policy(settings)
    targets = tuple(settings.probe_targets())
    sbcs = tuple((str(a), settings.voip.sip_probe_port) for a in settings.voip.sbc_addresses)
    links: dict[str, LinkSpec] = {}
    h = settings.health
    for role, link, interval_s, sip_interval_s in (
        ("primary", settings.links.primary, h.primary_interval_s, h.sip_interval_s),
        (
            "cellular",
            settings.links.cellular,
            h.cellular_idle_interval_s,
            h.cellular_idle_sip_interval_s,
        ),
    ):
        icmp: Any
        if isinstance(router, RouterPinger):
            # The agent is beside the router: the router pings, and the router steers the
            # agent's SIP probes to a link by their source port.
            via = VoipPath.PRIMARY if role == "primary" else VoipPath.CELLULAR
            icmp = RouterPingProber(router, via)
            port = settings.router.primary_probe_port
            if role == "cellular":
                port = settings.router.cellular_probe_port
            sip = SipOptionsProber(monotonic=clock.monotonic, local_port=port)
        else:
            source = link_source(link, role, source_addresses)
            icmp = IcmpProber(
                monotonic=clock.monotonic, source_address=source, device=link.interface
            )
            sip = SipOptionsProber(
                monotonic=clock.monotonic, source_address=source, device=link.interface
            )
        links[role] = LinkSpec(
            icmp_prober=icmp,
            icmp_targets=targets,
            policy=policy,
            interval_s=interval_s,
            probe_timeout_s=max(1.0, settings.health.down_after_s),
            sip_prober=sip,
            sip_targets=sbcs,
            sip_interval_s=sip_interval_s,
        )
    return Monitor(clock, links, on_assessment)


def cellular_better(settings: Settings, primary: Any, cellular: Any) -> bool:
    margin = settings.health.cellular_better_margin_mos
    return cellular_better_for_voice(primary, cellular, margin)


def assessment_figures(assessment: LinkAssessment) -> dict[str, Any]:
    """The figures `cpe-agent status` shows for a link."""
    return {
        "verdict": assessment.verdict.value,
        "reason": assessment.reason,
        "loss_pct": assessment.loss_pct,
        "rtt_ms": assessment.rtt_ms,
        "jitter_ms": assessment.jitter_ms,
        "mos": assessment.mos,
        "r_factor": assessment.r_factor,
        "targets_up": assessment.targets_up,
        "targets_total": assessment.targets_total,
        "sip_targets_up": assessment.sip_targets_up,
        "carrier_up": assessment.carrier_up,
    }
