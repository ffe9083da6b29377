"""The running agent: health in, decisions out; status, telemetry, meter and modem on
the side. Built by `agent.app` (the composition root, the only user of the driver
registry), which hands it a router driver and, when configured, a modem driver.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
from dataclasses import replace
from typing import Any

from agent import sdnotify
from agent.clock import Clock
from agent.config import Settings
from agent.coverage import Coverage
from agent.domain import Event, EventKind, LinkRole, Mode, Verdict
from agent.failover.controller import FailoverController, Transition
from agent.failover.fsm import FsmConfig, InstallerTestSignal, Observation
from agent.health import wiring as health_wiring
from agent.installer.service import InstallerService
from agent.meter.meter import Meter
from agent.modem import figures as modem_figures
from agent.modem.location_watch import LocationWatch, policy_of
from agent.modem.time_watch import TimeWatch
from agent.modem.watch import ModemWatch
from agent.status import write_status
from agent.store import Store
from agent.telemetry.mqtt import TelemetryClient
from agent.timesource import NetworkTimeSource, kernel_clock_synced, set_system_clock
from drivers import aio
from drivers.errors import DriverError
from drivers.modem.base import ModemDriver
from drivers.router.base import RouterDriver, RouterPinger
from drivers.types import RouterState, SignalReport, VoipPolicy

log = logging.getLogger(__name__)

EVALUATE_EVERY_S = 0.5
STATUS_EVERY_S = 1.0
ROUTER_IDENTITY_KEY = "router.identity"
#: Read the router back (drift, tampering, blocked counters) this often.
ROUTER_CHECK_EVERY_S = 5.0
CALLS_POLL_EVERY_S = 2.0
#: Link figures offered to the telemetry client, which sends only real changes plus an
#: hourly heartbeat, batched on LTE (see docs/mqtt.md).
TELEMETRY_EVERY_S = 60.0  # as hil.bench.mqtt_bytes assumes (telemetry_offered_every_s)
#: At the plan's cap: offered rarely; the client sends heartbeats only (events still go).
TELEMETRY_MINIMUM_EVERY_S = 900.0


def build_policy(settings: Settings) -> VoipPolicy:
    voip = settings.voip
    cellular = settings.links.cellular
    brokers = [str(a) for a in settings.mqtt.broker_addresses]
    if settings.mqtt.host and _is_ipv4(settings.mqtt.host):
        brokers.append(settings.mqtt.host)
    agent_prefixes = tuple(f"{address}/32" for address in dict.fromkeys(brokers))
    return VoipPolicy(
        primary_interface=settings.links.primary.interface,
        cellular_interface=cellular.interface,
        cellular_gateway=str(cellular.gateway) if cellular.gateway else None,
        lan_interfaces=tuple(voip.lan_interfaces),
        voip_prefixes=tuple(settings.voip_prefixes()),
        sip_ports=tuple(voip.sip_ports),
        rtp_port_min=voip.rtp_port_min,
        rtp_port_max=voip.rtp_port_max,
        match_dscp_ef=voip.match_dscp_ef,
        agent_prefixes=agent_prefixes,
        **_probe_ports(settings),
    )


def _probe_ports(settings: Settings) -> dict[str, int]:
    """RouterOS steers the agent's SIP probes by source port; a Linux router binds them."""
    if settings.router.driver != "routeros":
        return {}
    return {
        "primary_probe_port": settings.router.primary_probe_port,
        "cellular_probe_port": settings.router.cellular_probe_port,
    }


def fsm_config(settings: Settings) -> FsmConfig:
    f = settings.failover
    return FsmConfig(
        dwell_s=f.dwell_s,
        wait_for_calls=f.wait_for_calls,
        max_call_wait_s=f.max_call_wait_s,
        degraded_hold_s=f.degraded_hold_s,
        flap_window_s=f.flap_window_s,
        dwell_max_s=f.dwell_max_s,
    )


class Agent:
    """The running agent: health in, decisions out, status and events on the side."""

    def __init__(
        self,
        settings: Settings,
        router: RouterDriver,
        store: Store,
        clock: Clock,
        telemetry: TelemetryClient | None = None,
    ):
        self.settings = settings
        self.telemetry = telemetry
        #: The LTE data meter; set by run_agent (tests may run an Agent without one).
        self.meter: Meter | None = None
        #: At the plan's cap the agent's own reporting drops to the minimum (voice never stops).
        self.telemetry_minimum = False
        #: The LTE modem's driver (None: not configured) and its latest graded report.
        self.modem: ModemDriver | None = None
        self.modem_figures: dict[str, Any] | None = None
        self.signal: dict[str, Any] | None = None
        self.location: LocationWatch | None = None
        self.network_time: TimeWatch | None = None
        self.router = router
        self.store = store
        self.clock = clock
        self.policy = build_policy(settings)
        self.controller = FailoverController(router, store, clock, fsm_config(settings))
        self.assessments: dict[LinkRole, Any] = {}
        self.verdict_since_wall_s: dict[LinkRole, float] = {}
        self.active_calls = 0
        self.router_state: Any = None
        self._last_drift: tuple[str, ...] = ()
        self.mode_since_wall_s = clock.wall()
        self._changed = asyncio.Event()
        self._interfaces = {
            settings.links.primary.interface: LinkRole.PRIMARY,
            settings.links.cellular.interface: LinkRole.CELLULAR,
        }
        self.monitor: Any = None
        #: Each link's source address, as the probes bind it (None beside a MikroTik).
        self.link_sources: dict[str, str | None] = {}
        self.installer = InstallerService(self)

    async def start(self) -> None:
        await self.router.apply_policy(self.policy)
        sources: dict[str, str | None] = {}
        for role, link in (
            ("primary", self.settings.links.primary),
            ("cellular", self.settings.links.cellular),
        ):
            if isinstance(self.router, RouterPinger):
                break  # the router's addresses are not ours to bind: the router pings
            status = await self.router.link_status(link.interface)
            # LinkStatus gives CIDR ('198.51.100.2/30'); probes bind to the bare address.
            sources[role] = status.addresses[0].split("/")[0] if status.addresses else None
        self.link_sources = sources
        self.monitor = health_wiring.build_monitor(
            self.settings, self.clock, self._on_assessment, sources, self.router
        )
        await self.controller.resume()
        self.store.append_event(
            Event(
                EventKind.AGENT_STARTED,
                self.clock.wall(),
                {"mode": self.controller.state.mode.value, "path": self.controller.state.path},
            )
        )
        self._set_cellular_interval()
        self._publish_state()

    # --- what the fleet may change (MQTT commands) -----------------------------------

    HEALTH_THRESHOLDS = (
        "degraded_loss_pct",
        "degraded_rtt_ms",
        "degraded_jitter_ms",
        "degraded_mos",
    )

    def current_thresholds(self) -> dict[str, Any]:
        policy = self.monitor.policy(LinkRole.PRIMARY.value)
        return {name: getattr(policy, name) for name in self.HEALTH_THRESHOLDS}

    def apply_thresholds(self, wanted: dict[str, Any]) -> dict[str, Any]:
        """Apply the fleet's threshold overrides to both links' health policy, live.

        The contract has validated the ranges; the meter's usage thresholds come from the
        plan in the config file in this version, so a change of those is refused.
        """
        changes = {k: v for k, v in wanted.items() if v is not None}
        if "usage_thresholds_pct" in changes:
            raise ValueError(
                "usage thresholds are set by [plan] thresholds_pct in the config file "
                "in this version"
            )
        unknown = set(changes) - set(self.HEALTH_THRESHOLDS)
        if unknown:
            raise ValueError(f"unknown thresholds: {', '.join(sorted(unknown))}")
        for role in (LinkRole.PRIMARY, LinkRole.CELLULAR):
            policy = replace(self.monitor.policy(role.value), **changes)
            self.monitor.set_policy(role.value, policy)
        log.info("health thresholds changed by the fleet: %s", changes)
        return self.current_thresholds()

    # --- the modem ---------------------------------------------------------------------

    def _modem_tasks(self, modem: ModemDriver) -> list[asyncio.Task[None]]:
        """Watch the modem (signal, recovery), the site's location, and network time."""
        loc = self.settings.location
        guard = LocationWatch(
            self.store,
            self.clock,
            emit=self._modem_event,
            policy=policy_of(loc),
            driver=modem,
            gnss_every_s=loc.gnss_every_s,
        )
        self.location = guard

        def on_report(report: SignalReport, coverage: Coverage) -> None:
            self._on_modem_report(report, coverage)
            guard.on_report(report, coverage)

        watch = ModemWatch(
            modem,
            self.clock,
            self._calls_on_lte,
            emit=self._modem_event,
            on_report=on_report,
            poll_s=self.settings.modem.poll_s,
        )
        source = NetworkTimeSource(
            self.clock, kernel_clock_synced, set_system_clock=set_system_clock
        )
        self.network_time = TimeWatch(modem, source, self.clock)
        return [
            asyncio.create_task(watch.run(), name="modem"),
            asyncio.create_task(guard.run(), name="location-gnss"),
            asyncio.create_task(self.network_time.run(), name="network-time"),
        ]

    async def _calls_on_lte(self) -> bool:
        """Never reset the modem under a call on LTE (unless it is truly dead: the watch)."""
        if not self.controller.state.mode.voip_on_cellular:
            return False
        return await self.router.active_calls() > 0

    def _modem_event(self, kind: str, data: dict[str, Any]) -> None:
        try:
            event_kind = EventKind(kind)
        except ValueError:
            event_kind = EventKind.MODEM_NEEDS_ATTENTION
            data = {**data, "kind": kind}
        self.store.append_event(Event(event_kind, self.clock.wall(), data))

    def _on_modem_report(self, report: SignalReport, coverage: Coverage) -> None:
        self.modem_figures = modem_figures.report_figures(report, coverage)
        self.signal = modem_figures.signal_telemetry(report, coverage)

    def set_telemetry_minimum(self, minimum: bool) -> None:
        if minimum != self.telemetry_minimum:
            log.warning(
                "LTE plan cap reached: periodic telemetry cut to the minimum"
                if minimum
                else "LTE plan below its cap again: periodic telemetry back to normal"
            )
        self.telemetry_minimum = minimum
        if self.telemetry is not None:
            self.telemetry.set_minimum_telemetry(minimum)

    def _publish_state(self) -> None:
        if self.telemetry is not None:
            # The path, not the mode: on LTE the client keeps alive sparingly.
            self.telemetry.set_uplink(self.controller.state.path.value)
            self.telemetry.publish_state(
                {"mode": self.controller.state.mode.value, "since": self.mode_since_wall_s}
            )

    async def run_until(self, stop: asyncio.Event) -> None:
        tasks = [
            asyncio.create_task(self.monitor.run(), name="health-monitor"),
            asyncio.create_task(self._carrier_loop(), name="carrier"),
            asyncio.create_task(self._decide_loop(), name="decide"),
            asyncio.create_task(self._status_loop(), name="status"),
            asyncio.create_task(self._router_loop(), name="router-watch"),
        ]
        if self.meter is not None:
            tasks.append(asyncio.create_task(self.meter.run(), name="meter"))
        if self.modem is not None:
            tasks += self._modem_tasks(self.modem)
        stop_task = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait([stop_task, *tasks], return_when=asyncio.FIRST_COMPLETED)
        for task in [*tasks, stop_task]:
            task.cancel()
        for task in done:
            if task is not stop_task and not task.cancelled() and task.exception():
                raise task.exception()  # type: ignore[misc]
        await asyncio.gather(*tasks, return_exceptions=True)

    # --- inputs ---------------------------------------------------------------------

    def _on_assessment(self, role: str, assessment: Any) -> None:
        link = LinkRole(role)
        previous = self.assessments.get(link)
        if previous is None or previous.verdict != assessment.verdict:
            self.verdict_since_wall_s[link] = self.clock.wall()
        self.assessments[link] = assessment
        self._changed.set()

    async def _carrier_loop(self) -> None:
        """The fast path: a lost carrier is a down link, no probe needed."""
        for interface, role in self._interfaces.items():
            try:
                status = await self.router.link_status(interface)
                self.monitor.set_carrier(role.value, status.carrier_up)
            except DriverError as exc:
                log.warning("cannot read %s: %s", interface, exc)
        async for event in self.router.watch_carrier():
            changed = self._interfaces.get(event.interface)
            if changed is not None:
                log.info("carrier %s on %s", "up" if event.carrier_up else "down", event.interface)
                self.monitor.set_carrier(changed.value, event.carrier_up)

    # --- decisions ------------------------------------------------------------------

    def link_verdict(self, role: LinkRole) -> Verdict:
        assessment = self.assessments.get(role)
        return Verdict(assessment.verdict) if assessment is not None else Verdict.UNKNOWN

    def observation(self) -> Observation:
        primary = self.assessments.get(LinkRole.PRIMARY)
        cellular = self.assessments.get(LinkRole.CELLULAR)
        better = False
        if primary is not None and cellular is not None:
            better = health_wiring.cellular_better(self.settings, primary, cellular)
        return Observation(
            primary=self.link_verdict(LinkRole.PRIMARY),
            cellular=self.link_verdict(LinkRole.CELLULAR),
            cellular_better=better,
            active_calls=self.active_calls,
        )

    def evidence(self) -> dict[str, object]:
        """Each link's verdict and figures, for the events of a transition."""
        found: dict[str, object] = {}
        for role, assessment in self.assessments.items():
            figures = health_wiring.assessment_figures(assessment)
            found[role.value] = {
                key: round(value, 2) if isinstance(value, float) else value
                for key, value in figures.items()
                if key in ("verdict", "reason", "loss_pct", "rtt_ms", "jitter_ms", "mos")
            }
        return found

    async def _decide_loop(self) -> None:
        while True:
            # Not asyncio.wait_for: on 3.11 a cancel that came as an assessment woke this
            # loop was lost, and run_until's gather waited for ever (drivers.aio).
            with contextlib.suppress(TimeoutError):
                await aio.wait_for(self._changed.wait(), EVALUATE_EVERY_S)
            self._changed.clear()
            await self.decide()

    async def decide(self) -> None:
        try:
            transition = await self.controller.observe(self.observation(), self.evidence())
        except DriverError as exc:
            log.error("failover action failed: %s", exc)
            return
        self._after(transition)

    async def installer_signal(self, signal: InstallerTestSignal) -> Transition | None:
        """Start or end the installer test's forced failover (the table's TEST rows).

        Raises the driver's error when the router does not take the change: the test
        reports it, and restores.
        """
        observation = replace(self.observation(), test=signal)
        transition = await self.controller.observe(observation, self.evidence())
        self._after(transition)
        return transition

    def link_binding(self, role: LinkRole) -> tuple[str | None, str | None]:
        """(source address, device) for a socket that must leave by one link.

        Beside a MikroTik (a RouterPinger) the agent cannot bind to the router's links:
        its datagrams follow the VoIP path, so they are measured in the mode they test.
        """
        if isinstance(self.router, RouterPinger):
            return None, None
        link = health_wiring.link_settings(self.settings, role.value)
        return health_wiring.link_source(link, role.value, self.link_sources), link.interface

    def _after(self, transition: Transition | None) -> None:
        if transition is not None:
            self.mode_since_wall_s = self.clock.wall()
            log.info(
                "%s -> %s (%s) in %.0f ms",
                transition.from_mode.value,
                transition.to_mode.value,
                transition.reason,
                transition.switch_s * 1000,
            )
            self._set_cellular_interval()
            self._publish_state()
            self._write_status()  # at once: tools waiting on the mode must not see a stale one

    def _set_cellular_interval(self) -> None:
        """Probe LTE sparsely while idle (plan bytes); closely whenever it may carry VoIP."""
        health = self.settings.health
        if self.controller.state.mode is Mode.PRIMARY:
            interval, sip_interval = (
                health.cellular_idle_interval_s,
                health.cellular_idle_sip_interval_s,
            )
        else:
            interval, sip_interval = health.cellular_active_interval_s, health.sip_interval_s
        self.monitor.set_interval(LinkRole.CELLULAR.value, interval, sip_interval_s=sip_interval)

    # --- the router -----------------------------------------------------------------

    async def _router_loop(self) -> None:
        """Count calls while recovering; check for drift and tampering, and repair."""
        last_check = -ROUTER_CHECK_EVERY_S
        while True:
            now = self.clock.monotonic()
            try:
                if self.controller.state.mode is Mode.RECOVERING:
                    self.active_calls = await self.router.active_calls()
                else:
                    self.active_calls = 0
                if now - last_check >= ROUTER_CHECK_EVERY_S:
                    last_check = now
                    await self._check_drift()
            except DriverError as exc:
                log.warning("router check failed: %s", exc)
            await self.clock.sleep(CALLS_POLL_EVERY_S)

    async def _check_drift(self) -> None:
        async with self.controller.lock:  # never mistake a switch in progress for drift
            await self._check_drift_locked()

    def _report_identity_and_notices(self, state: RouterState) -> None:
        """Notices are events as they are (re-applying would not undo them); a changed
        serial number, also across agent restarts, is tampering or a swap."""
        for notice in state.notices:
            self.store.append_event(
                Event(EventKind.ROUTER_NOTICE, self.clock.wall(), {"notice": notice})
            )
        if state.identity is None or not state.identity.serial:
            return
        known = self.store.get(ROUTER_IDENTITY_KEY)
        current = {"serial": state.identity.serial, "model": state.identity.model}
        if known is not None and known.get("serial") != current["serial"]:
            self.store.append_event(
                Event(
                    EventKind.ROUTER_TAMPER,
                    self.clock.wall(),
                    {"was": known, "now": current, "reapplied": True},
                )
            )
        if known != current:
            self.store.put(ROUTER_IDENTITY_KEY, current)

    async def _check_drift_locked(self) -> None:
        state = await self.router.read_state()
        if self.meter is not None:
            self.meter.note_router_state(state)  # blocked, voice and agent bytes on LTE
        self._report_identity_and_notices(state)
        expected_path = self.controller.state.path
        drift = list(state.drift)
        if state.voip_path is not expected_path:
            drift.append(f"VoIP path is {state.voip_path}, expected {expected_path.value}")
        self.router_state = state
        if not drift:
            self._last_drift = ()
            return
        repair = self.settings.router.reapply_on_drift
        if tuple(drift) != self._last_drift:  # once per distinct drift, not every check
            self._last_drift = tuple(drift)
            self.store.append_event(
                Event(
                    EventKind.ROUTER_DRIFT, self.clock.wall(), {"drift": drift, "repaired": repair}
                )
            )
        if not repair:
            log.warning("router drift (left as it is, reapply_on_drift = false): %s", drift)
            return
        log.warning("router drift, re-applying: %s", "; ".join(drift))
        await self.router.apply_policy(self.policy)
        await self.router.set_voip_path(expected_path)
        self.router_state = await self.router.read_state()

    # --- status ---------------------------------------------------------------------

    async def _status_loop(self) -> None:
        last_telemetry_s = -TELEMETRY_EVERY_S
        while True:
            if self.meter is not None:
                primary_up = self.link_verdict(LinkRole.PRIMARY) is Verdict.UP
                self.meter.note_links(self.controller.state.mode, primary_up)
                if self.telemetry is not None:
                    # The agent's own MQTT bytes on LTE (IP+TCP+TLS+MQTT) reach the meter.
                    self.meter.note_agent_wire_bytes(self.telemetry.lte_wire_bytes)
            self._write_status()
            sdnotify.notify("WATCHDOG=1")  # from the loop itself: a wedged loop stops it
            now = self.clock.monotonic()
            every_s = TELEMETRY_MINIMUM_EVERY_S if self.telemetry_minimum else TELEMETRY_EVERY_S
            if self.telemetry is not None and now - last_telemetry_s >= every_s:
                last_telemetry_s = now
                try:
                    self.telemetry.publish_telemetry(self._telemetry_payload())
                except Exception:  # reporting must never take the failover loop down
                    log.exception("telemetry sample not sent")
            await self.clock.sleep(STATUS_EVERY_S)

    def _telemetry_payload(self) -> dict[str, Any]:
        # Links stay in even at the minimum: the client sends only changes and heartbeats.
        payload: dict[str, Any] = {
            "mode": self.controller.state.mode.value,
            "links": self.status()["links"],
        }
        if self.signal is not None:
            payload["signal"] = self.signal
        if self.meter is not None:
            payload["usage"] = self.meter.telemetry()
        return payload

    def _write_status(self) -> None:
        try:
            write_status(self.settings.agent.runtime_dir, self.status())
        except OSError as exc:
            log.warning("cannot write the status file: %s", exc)

    def status(self) -> dict[str, Any]:
        state = self.controller.state
        links: dict[str, Any] = {}
        for role, link_cfg in (
            (LinkRole.PRIMARY, self.settings.links.primary),
            (LinkRole.CELLULAR, self.settings.links.cellular),
        ):
            assessment = self.assessments.get(role)
            entry: dict[str, Any] = {"interface": link_cfg.interface, "verdict": "unknown"}
            if assessment is not None:
                entry.update(health_wiring.assessment_figures(assessment))
                entry["verdict_since_wall_s"] = self.verdict_since_wall_s.get(role)
            links[role.value] = entry
        router: dict[str, Any] = {"driver": self.settings.router.driver}
        if self.router_state is not None:
            router.update(
                in_sync=not self.router_state.drift,
                drift=list(self.router_state.drift),
                blocked_packets=self.router_state.blocked_packets,
                blocked_bytes=self.router_state.blocked_bytes,
            )
        recent = [
            f"{stored.event.kind.value} {stored.event.data.get('reason', '')}".strip()
            for stored in self.store.recent_events(5)
        ]
        return {
            "device_id": self.settings.agent.device_id,
            "mode": state.mode.value,
            "voip_path": state.path.value,
            "mode_since_wall_s": self.mode_since_wall_s,
            "active_calls": self.active_calls,
            "links": links,
            "router": router,
            "recent_events": recent,
            "meter": self.meter.snapshot() if self.meter is not None else None,
            "modem": self.modem_figures,
            "location": self.location.status() if self.location else None,
            "network_time": self.network_time.status() if self.network_time else None,
            "written_wall_s": self.clock.wall(),
        }


def _is_ipv4(text: str) -> bool:
    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        return False
    return True
