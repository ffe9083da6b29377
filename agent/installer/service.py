"""One failover test at a time, whoever asks: the installer's command line (through the
control socket) or the fleet (the MQTT `run_failover_test` command)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from agent.installer.report import TestReport
from agent.installer.runner import FailoverTestRun, Progress, TestOptions

if TYPE_CHECKING:
    from agent.runtime import Agent


class TestBusyError(Exception):
    """A test is already running; the message is the sentence a person sees."""

    __test__ = False  # not a pytest class, whatever its name


class InstallerService:
    def __init__(self, agent: Agent) -> None:
        self._agent = agent
        self._running: asyncio.Task[TestReport] | None = None

    @property
    def busy(self) -> bool:
        return self._running is not None and not self._running.done()

    def options(
        self,
        *,
        force: bool = False,
        max_duration_s: float | None = None,
        requested_by: str = "installer",
    ) -> TestOptions:
        """The config's bounds, narrowed (never widened) by what the caller asks."""
        inst = self._agent.settings.installer
        duration = inst.max_duration_s
        if max_duration_s is not None:
            duration = min(duration, max(20.0, max_duration_s))
        return TestOptions(
            force=force,
            max_duration_s=duration,
            max_lte_bytes=inst.max_lte_bytes,
            requested_by=requested_by,
        )

    def start(
        self, options: TestOptions, progress: Progress | None = None
    ) -> asyncio.Task[TestReport]:
        """Start a test; the task ends with the report (also when it is cancelled:
        cancelling restores the normal state and reports the test as interrupted)."""
        if self.busy:
            raise TestBusyError("a failover test is already running; wait for it to finish")
        run = FailoverTestRun(self._agent, options, progress)
        self._running = asyncio.create_task(run.run(), name="failover-test")
        return self._running

    async def run_for_fleet(self, duration_s: float) -> dict[str, Any]:
        """The MQTT command's hook. The fleet cannot force: a remote person must not drop
        a call in progress at a site they cannot see."""
        options = self.options(max_duration_s=duration_s, requested_by="fleet")
        report = await self.start(options)
        return report.to_dict()
