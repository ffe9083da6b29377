"""The I/O shell around a ModemDriver: poll, grade, recover, report.

Each poll reads one report (opening the driver first if it is not open yet), grades it,
hands it to `on_report` (location guard, telemetry), and lets `recovery.step` decide
whether to turn the radio on or reset the modem the vendor's way. Time comes from the
injected clock; `calls_on_lte()` says whether calls are on LTE right now (it may be a
coroutine function). Events go to `emit(kind, data)`, for the agent's outbox.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from agent.clock import Clock
from agent.coverage import Coverage, grade
from agent.modem import recovery
from agent.modem.recovery import Action, Decision, Outcome, RecoveryPolicy, RecoveryState
from drivers.errors import DeviceReplyError, DriverError, NeedsHumanError
from drivers.modem.base import ModemDriver
from drivers.types import SignalReport

log = logging.getLogger(__name__)

Emit = Callable[[str, dict[str, Any]], None]


class ModemWatch:
    def __init__(
        self,
        driver: ModemDriver,
        clock: Clock,
        calls_on_lte: Callable[[], bool | Awaitable[bool]],
        *,
        emit: Emit | None = None,
        on_report: Callable[[SignalReport, Coverage], None] | None = None,
        policy: RecoveryPolicy | None = None,
        poll_s: float = 30.0,
    ) -> None:
        self.driver = driver
        self.clock = clock
        self.calls_on_lte = calls_on_lte
        self.emit = emit or (lambda kind, data: None)
        self.on_report = on_report
        self.policy = policy or RecoveryPolicy()
        self.poll_s = poll_s
        self.state = RecoveryState()
        self.latest: SignalReport | None = None
        self.coverage: Coverage | None = None
        self.last_error: str | None = None
        self._opened = False
        self._told_human: str | None = None

    async def run(self) -> None:
        """Poll forever (cancel the task to stop)."""
        try:
            while True:
                await self.poll_once()
                await self.clock.sleep(self.poll_s)
        finally:
            if self._opened:
                try:
                    await self.driver.close()
                except DriverError as exc:
                    log.debug("closing the modem driver: %s", exc)

    async def poll_once(self) -> Decision:
        report, outcome = await self._read()
        calls = await self._calls()
        now = self.clock.monotonic()
        self.state, decision = recovery.step(self.state, now, outcome, report, calls, self.policy)
        for kind, data in decision.events:
            self._emit(kind, data)
        if report is not None:
            self.latest = report
            self.coverage = grade(report)
            if self.on_report is not None:
                self.on_report(report, self.coverage)
        if decision.action is Action.RADIO_ON:
            try:
                await self.driver.set_radio(True)
            except DriverError as exc:
                log.warning("turning the modem's radio on failed: %s", exc)
        elif decision.action is Action.RESET:
            await self._reset()
        return decision

    def status(self) -> dict[str, Any]:
        """For `cpe-agent status` and telemetry: the last report's grade and the recovery state."""
        return {
            "grade": self.coverage.grade.value if self.coverage else None,
            "limited_by": self.coverage.limited_by if self.coverage else None,
            "problem": self.state.problem,
            "resets": self.state.resets,
            "failures": self.state.failures,
            "last_error": self.last_error,
        }

    async def _read(self) -> tuple[SignalReport | None, Outcome]:
        try:
            if not self._opened:
                await self.driver.open()
                self._opened = True
            report = await self.driver.read_report()
        except DeviceReplyError as exc:
            self.last_error = str(exc)
            log.warning("modem reply unreadable: %s (raw %r)", exc, exc.raw[:500])
            return None, Outcome.GARBLED
        except NeedsHumanError as exc:
            self.last_error = str(exc)
            if self._told_human != str(exc):
                self._told_human = str(exc)
                self._emit("modem_needs_attention", {"error": str(exc), "remedy": exc.remedy})
            return None, Outcome.NO_ANSWER
        except DriverError as exc:
            self.last_error = str(exc)
            log.info("modem did not answer: %s", exc)
            return None, Outcome.NO_ANSWER
        self.last_error = None
        self._told_human = None
        return report, Outcome.OK

    async def _calls(self) -> bool:
        try:
            value = self.calls_on_lte()
            if inspect.isawaitable(value):
                value = await value
            return bool(value)
        except Exception:  # unknown counts as "calls may be up": never drop them blindly
            log.exception("calls_on_lte failed; assuming calls are on LTE")
            return True

    async def _reset(self) -> None:
        error: str | None = None
        try:
            await self.driver.reset()
            self._opened = True
        except DriverError as exc:
            error = str(exc)
            log.warning("modem reset failed: %s", exc)
        self.state, events = recovery.after_reset(self.state, self.clock.monotonic(), error)
        for kind, data in events:
            self._emit(kind, data)

    def _emit(self, kind: str, data: dict[str, Any]) -> None:
        try:
            self.emit(kind, {**data, "driver": getattr(self.driver, "name", "?")})
        except Exception:
            log.exception("emitting %s failed", kind)
