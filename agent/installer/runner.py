"""The installer's failover test, run inside the agent that owns the router.

Pre-checks, a forced failover (the state machine's TEST mode), measurements over LTE,
failback, and the verdict: `docs/installer.md` walks through each step. The run is
bounded in time (`max_duration_s`, failback included) and in LTE bytes
(`max_lte_bytes`), and it always ends in the normal state: a failure, the time bound,
or a cancellation (the installer's Ctrl-C) all go through `_restore`; a crash leaves
TEST persisted, which the next start resumes as PRIMARY (`agent.failover.fsm.resume`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, TypeVar

from agent.coverage import grade as coverage_grade
from agent.domain import Event, EventKind, LinkRole, Mode
from agent.failover.fsm import InstallerTestSignal
from agent.installer import echo, judge
from agent.installer.echo_figures import RoundTripFigures
from agent.installer.report import (
    STEPS,
    StepResult,
    StepStatus,
    TestReport,
    TestVerdict,
    event_summary,
    skipped,
    verdict_of,
)
from agent.location import SiteBaseline
from agent.modem.location_watch import load_baseline
from drivers.errors import DriverError
from drivers.types import ModemIdentity, ProbeResult, RouterState, SignalReport, VoipPath

if TYPE_CHECKING:
    from agent.runtime import Agent

log = logging.getLogger(__name__)

LAST_REPORT_KEY = "installer.last_report"
#: Kept back from the time bound for the failback and its check, whatever happens before.
FAILBACK_RESERVE_S = 15.0
#: One SIP OPTIONS exchange over UDP, both ways, IP and UDP headers included: an
#: estimate from the probe's message sizes (the prober does not count its bytes).
SIP_REQUEST_BYTES = 520
SIP_RESPONSE_BYTES = 600
#: RTP-sized datagram: 12 B RTP header + 160 B of G.711 (20 ms); 28 B of IP and UDP.
RTP_PAYLOAD_BYTES = 172
CAPACITY_PACKET_BYTES = 1200
CAPACITY_PACKETS_MAX = 60
CAPACITY_PACKETS_MIN = 10
PRIMARY_AGAIN_ECHOES = 10
READ_TIMEOUT_S = 10.0

Progress = Callable[[dict[str, Any]], None]
T = TypeVar("T")


@dataclass(frozen=True)
class TestOptions:
    __test__ = False  # not a pytest class, whatever its name

    force: bool = False
    max_duration_s: float = 120.0
    max_lte_bytes: int = 500_000
    #: "installer" (the command line) or "fleet" (the MQTT command).
    requested_by: str = "installer"


class _Stop(Exception):
    """An earlier step makes the rest pointless or unsafe; the reason names it."""

    def __init__(self, reason: str, refused: bool = False) -> None:
        super().__init__(reason)
        self.refused = refused


class FailoverTestRun:
    def __init__(self, agent: Agent, options: TestOptions, progress: Progress | None = None):
        self.agent = agent
        self.options = options
        self.progress = progress or (lambda _message: None)
        self.clock = agent.clock
        self.settings = agent.settings
        inst = agent.settings.installer
        self.limits = judge.Thresholds(
            warn_mos=agent.settings.health.degraded_mos,
            fail_mos=inst.fail_mos,
            expected_calls=inst.expected_calls,
            warn_switch_ms=inst.warn_switch_ms,
        )
        self.steps: list[StepResult] = []
        self.lte_test_bytes = 0
        self.refused = False
        self.interrupted = False
        self.echo_target: tuple[str, int] | None = None
        self._lte_counter_start: int | None = None
        self._lte_counter_end: int | None = None

    # -- the run --------------------------------------------------------------------

    async def run(self) -> TestReport:
        started_wall_s = self.clock.wall()
        started_s = self.clock.monotonic()
        self._event(
            EventKind.TEST_STARTED,
            {
                "requested_by": self.options.requested_by,
                "force": self.options.force,
                "max_duration_s": self.options.max_duration_s,
                "max_lte_bytes": self.options.max_lte_bytes,
            },
        )
        stop_reason: str | None = None
        try:
            async with asyncio.timeout(max(5.0, self.options.max_duration_s - FAILBACK_RESERVE_S)):
                await self._steps()
        except _Stop as stop:
            stop_reason = str(stop)
            self.refused = stop.refused
        except TimeoutError:
            self.interrupted = True
            stop_reason = f"the test ran out of its {self.options.max_duration_s:.0f} s"
        except asyncio.CancelledError:
            self.interrupted = True
            stop_reason = "the test was interrupted"
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()  # restore first; the report says it was interrupted
        except Exception as exc:  # never leave the site in TEST: restore, then report
            log.exception("the failover test failed")
            self.interrupted = True
            stop_reason = f"the test itself failed ({exc})"
        path_after = await self._restore()
        for name, _title in STEPS:
            if not any(step.name == name for step in self.steps):
                self._record(skipped(name, f"not run: {stop_reason or 'stopped'}"))
        report = TestReport(
            verdict=verdict_of(self.steps),
            steps=tuple(self.steps),
            device_id=self.settings.agent.device_id,
            started_wall_s=started_wall_s,
            duration_s=self.clock.monotonic() - started_s,
            lte_test_bytes=self.lte_test_bytes,
            lte_interface_bytes=self._lte_interface_bytes(),
            max_lte_bytes=self.options.max_lte_bytes,
            max_duration_s=self.options.max_duration_s,
            requested_by=self.options.requested_by,
            refused=self.refused,
            interrupted=self.interrupted,
            voip_path_after=path_after,
        )
        if self.interrupted:
            # An interrupted run fails whatever its steps said: it proved nothing.
            report = _with_verdict_fail(report)
        self._finish(report)
        return report

    async def _steps(self) -> None:
        state = await self._timed("router", self._router_step)
        await self._timed("rules", lambda: self._rules_step(state))
        self._record_now(judge.sip_helper(state, self.settings.router.driver))
        report = await self._timed("modem", self._modem_step)
        await self._timed("coverage", lambda: self._coverage_step(report))
        self._record_now(self._location_step())
        await self._timed("calls", self._calls_step)
        await self._timed("primary_voice", self._primary_voice_step)
        await self._failover_and_measure()

    async def _failover_and_measure(self) -> None:
        self._lte_counter_start = await self._lte_counter()
        blocked_before = 0
        with contextlib.suppress(DriverError):
            blocked_before = (await self.agent.router.read_state()).blocked_packets
        await self._timed("switch_to_lte", self._switch_step)
        sip_ok = await self._timed("sip_lte", self._sip_lte_step)
        await self._timed("voice_lte", lambda: self._voice_lte_step(sip_ok))
        await self._timed("capacity_lte", lambda: self._capacity_step(sip_ok))
        await self._timed("guard_lte", lambda: self._guard_step(blocked_before))
        self._lte_counter_end = await self._lte_counter()
        await self._timed("failback", self._failback_step)
        await self._timed("primary_again", self._primary_again_step)

    # -- pre-checks -----------------------------------------------------------------

    async def _router_step(self) -> tuple[StepResult, RouterState]:
        try:
            state = await asyncio.wait_for(self.agent.router.read_state(), READ_TIMEOUT_S)
        except (DriverError, TimeoutError) as exc:
            text = str(exc) or "no answer within 10 s"
            remedy = (
                getattr(exc, "remedy", None)
                or "check the router's power, its address "
                "and the agent's login, then run the test again"
            )
            raise self._fail_stop(judge.failed_router(text, remedy)) from exc
        return judge.router(state, self.settings.router.driver), state

    async def _rules_step(self, state: RouterState) -> tuple[StepResult, None]:
        result = judge.rules(state)
        if result.status is StepStatus.FAIL:
            raise self._fail_stop(result)
        return result, None

    async def _modem_step(self) -> tuple[StepResult, SignalReport | None]:
        modem = self.agent.modem
        if modem is None:
            return judge.no_modem(), None
        identity: ModemIdentity | None = None
        timeout_s = self.settings.modem.timeout_s * 3
        try:
            report = await asyncio.wait_for(modem.read_report(), timeout_s)
            with contextlib.suppress(DriverError, TimeoutError):
                identity = await asyncio.wait_for(modem.identity(), timeout_s)
        except (DriverError, TimeoutError) as exc:
            raise self._fail_stop(judge.modem(None, None, str(exc) or "timeout")) from exc
        result = judge.modem(report, identity, None)
        if result.status is StepStatus.FAIL:
            raise self._fail_stop(result)
        return result, report

    async def _coverage_step(self, report: SignalReport | None) -> tuple[StepResult, None]:
        if report is None:
            return skipped("coverage", "not checked: no modem configured"), None
        result = judge.coverage(report, coverage_grade(report))
        if result.status is StepStatus.FAIL:
            raise self._fail_stop(result)
        return result, None

    def _location_step(self) -> StepResult:
        baseline: SiteBaseline | None = None
        with contextlib.suppress(Exception):  # an unreadable baseline is "not recorded"
            baseline = load_baseline(self.agent.store)
        return judge.location(baseline, watched=self.agent.modem is not None)

    async def _calls_step(self) -> tuple[StepResult, None]:
        try:
            active = await asyncio.wait_for(self.agent.router.active_calls(), READ_TIMEOUT_S)
        except (DriverError, TimeoutError) as exc:
            raise self._fail_stop(judge.calls_unknown(str(exc) or "timeout")) from exc
        result = judge.calls(active, self.options.force)
        if result.status is StepStatus.FAIL:
            raise self._fail_stop(result, refused=True)
        return result, None

    async def _primary_voice_step(self) -> tuple[StepResult, None]:
        mode = self.agent.controller.state.mode
        verdict = self.agent.link_verdict(LinkRole.PRIMARY)
        refusal = judge.normal_state(mode.value.lower(), verdict.value.lower())
        if refusal is not None:
            raise self._fail_stop(refusal, refused=True)
        figures, target = await self._round_trips(
            LinkRole.PRIMARY, self.settings.installer.rtp_packets
        )
        return judge.voice("primary_voice", "primary", figures, _name(target), self.limits), None

    # -- over LTE -------------------------------------------------------------------

    async def _switch_step(self) -> tuple[StepResult, None]:
        try:
            transition = await self.agent.installer_signal(InstallerTestSignal.START)
        except DriverError as exc:
            raise self._fail_stop(
                judge.switch(None, None, None, 0, self.limits, error=str(exc))
            ) from exc
        path = await self._read_path()
        result = judge.switch(
            transition.to_mode.value.lower() if transition else None,
            transition.switch_s * 1000 if transition else None,
            path,
            transition.conntrack_flushed if transition else 0,
            self.limits,
        )
        if result.status is StepStatus.FAIL:
            raise self._fail_stop(result)
        return result, None

    async def _sip_lte_step(self) -> tuple[StepResult, bool]:
        results = await self._sip_round(LinkRole.CELLULAR)
        result = judge.sip_over_lte(results)
        return result, result.status is not StepStatus.FAIL

    async def _voice_lte_step(self, sip_ok: bool) -> tuple[StepResult, None]:
        figures, target = await self._round_trips(
            LinkRole.CELLULAR, self.settings.installer.rtp_packets
        )
        result = judge.voice("voice_lte", "LTE", figures, _name(target), self.limits)
        if not sip_ok and (figures is None or figures.received == 0):
            result = judge.nothing_over_lte("voice_lte")
        return result, None

    async def _capacity_step(self, sip_ok: bool) -> tuple[StepResult, None]:
        left = self.options.max_lte_bytes - self.lte_test_bytes
        packets = min(CAPACITY_PACKETS_MAX, left // (2 * CAPACITY_PACKET_BYTES))
        if packets < CAPACITY_PACKETS_MIN:
            return judge.budget_spent(self.lte_test_bytes, self.options.max_lte_bytes), None
        targets = self.settings.echo_targets()
        target = self.echo_target or (targets[0] if targets else None)
        figures = None
        if target is not None:
            source, device = self.agent.link_binding(LinkRole.CELLULAR)
            figures = await echo.capacity_train(
                target,
                packets=packets,
                packet_bytes=CAPACITY_PACKET_BYTES,
                call_kbps=self.settings.installer.call_kbps,
                source_address=source,
                device=device,
                monotonic=self.clock.monotonic,
            )
            self.lte_test_bytes += figures.bytes_sent + figures.bytes_received
        return judge.capacity(figures, self.limits, sip_ok), None

    async def _guard_step(self, blocked_before: int) -> tuple[StepResult, None]:
        state = await asyncio.wait_for(self.agent.router.read_state(), READ_TIMEOUT_S)
        return judge.guard(state, blocked_before), None

    # -- back -----------------------------------------------------------------------

    async def _failback_step(self) -> tuple[StepResult, None]:
        return await self._failback(), None

    async def _failback(self) -> StepResult:
        try:
            transition = await asyncio.wait_for(
                self.agent.installer_signal(InstallerTestSignal.END), FAILBACK_RESERVE_S
            )
        except (DriverError, TimeoutError) as exc:
            return judge.failback(None, None, None, 0, error=str(exc) or "timeout")
        path = await self._read_path()
        return judge.failback(
            (transition.to_mode if transition else self.agent.controller.state.mode).value.lower(),
            transition.switch_s * 1000 if transition else None,
            path,
            transition.conntrack_flushed if transition else 0,
        )

    async def _primary_again_step(self) -> tuple[StepResult, None]:
        if self.agent.controller.state.path is not VoipPath.PRIMARY:
            return skipped("primary_again", "not run: VoIP is not back on the primary"), None
        results = await self._sip_round(LinkRole.PRIMARY)
        figures = None
        if self.echo_target is not None:
            figures = await self._echo(LinkRole.PRIMARY, self.echo_target, PRIMARY_AGAIN_ECHOES)
        return judge.primary_again(results, figures), None

    async def _restore(self) -> str | None:
        """Whatever happened: leave TEST (failing back when the primary allows)."""
        if self.agent.controller.state.mode is Mode.TEST:
            if self._lte_counter_end is None:
                self._lte_counter_end = await self._lte_counter()
            started_s = self.clock.monotonic()
            result = await self._failback()
            self._record(_timed_result(result, self.clock.monotonic() - started_s))
        path = await self._read_path()
        return path.value if path is not None else None

    # -- helpers --------------------------------------------------------------------

    async def _timed(self, name: str, step: Callable[[], Awaitable[tuple[StepResult, T]]]) -> T:
        self.progress({"type": "step_started", "name": name})
        started_s = self.clock.monotonic()
        result, value = await step()
        self._record(_timed_result(result, self.clock.monotonic() - started_s))
        return value

    def _record_now(self, result: StepResult) -> None:
        self.progress({"type": "step_started", "name": result.name})
        self._record(result)

    def _record(self, result: StepResult) -> None:
        self.steps.append(result)
        self.progress({"type": "step", "step": result.to_dict()})

    def _fail_stop(self, result: StepResult, refused: bool = False) -> _Stop:
        self._record(result)
        return _Stop(f"{result.title.lower()} failed", refused=refused)

    async def _sip_round(self, role: LinkRole) -> list[ProbeResult]:
        spec = self.agent.monitor.spec(role.value)
        prober = spec.sip_prober
        if prober is None or not spec.sip_targets:
            return []
        results = await asyncio.gather(
            *(prober.probe(host, port, timeout_s=4.0) for host, port in spec.sip_targets)
        )
        if role is LinkRole.CELLULAR:
            for r in results:
                self.lte_test_bytes += SIP_REQUEST_BYTES * (1 if r.answered else 4)
                self.lte_test_bytes += SIP_RESPONSE_BYTES if r.answered else 0
        return list(results)

    async def _round_trips(
        self, role: LinkRole, count: int
    ) -> tuple[RoundTripFigures | None, tuple[str, int] | None]:
        """RTP-sized round trips to the first echo target that answers (tried in order,
        starting with the one that answered before)."""
        targets = self.settings.echo_targets()
        if self.echo_target in targets:
            targets = [self.echo_target, *[t for t in targets if t != self.echo_target]]
        last: RoundTripFigures | None = None
        for target in targets:
            last = await self._echo(role, target, count)
            if last.received:
                self.echo_target = target
                return last, target
        return last, targets[0] if targets else None

    async def _echo(self, role: LinkRole, target: tuple[str, int], count: int) -> RoundTripFigures:
        source, device = self.agent.link_binding(role)
        figures = await echo.rtp_round_trips(
            target,
            count=count,
            payload_bytes=RTP_PAYLOAD_BYTES,
            source_address=source,
            device=device,
            codec=self.settings.health.codec,
            monotonic=self.clock.monotonic,
            sleep=self.clock.sleep,
        )
        if role is LinkRole.CELLULAR:
            self.lte_test_bytes += figures.bytes_sent + figures.bytes_received
        return figures

    async def _read_path(self) -> VoipPath | None:
        try:
            state = await asyncio.wait_for(self.agent.router.read_state(), READ_TIMEOUT_S)
        except (DriverError, TimeoutError):
            return None
        return state.voip_path

    async def _lte_counter(self) -> int | None:
        try:
            counters = await self.agent.router.interface_counters(
                self.settings.links.cellular.interface
            )
        except DriverError:
            return None
        return counters.rx_bytes + counters.tx_bytes

    def _lte_interface_bytes(self) -> int | None:
        start, end = self._lte_counter_start, self._lte_counter_end
        if start is None or end is None or end < start:
            return None
        return end - start

    def _event(self, kind: EventKind, data: dict[str, Any]) -> None:
        self.agent.store.append_event(Event(kind, self.clock.wall(), data))

    def _finish(self, report: TestReport) -> None:
        as_dict = report.to_dict()
        try:
            self.agent.store.put(LAST_REPORT_KEY, as_dict)
        except Exception as exc:  # the report still reaches the person and the event
            log.warning("cannot store the test report: %s", exc)
        self._event(EventKind.TEST_FINISHED, event_summary(as_dict))
        log.info(
            "failover test %s in %.1f s (%d LTE bytes)",
            report.verdict.value,
            report.duration_s,
            report.lte_test_bytes,
        )


def _timed_result(result: StepResult, seconds: float) -> StepResult:
    return replace(result, duration_ms=seconds * 1000)


def _with_verdict_fail(report: TestReport) -> TestReport:
    return replace(report, verdict=TestVerdict.FAIL)


def _name(target: tuple[str, int] | None) -> str | None:
    return f"{target[0]}:{target[1]}" if target else None
