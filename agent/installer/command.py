"""`cpe-agent failover-test`: ask the running agent to run the test, or run it here.

With the agent running (it holds `<state_dir>/agent.lock`), the command talks to it
over its control socket (`agent.control`): only the agent that owns the router may
move VoIP. With no agent running (a new site, before the service is enabled), the
command starts the agent in-process, waits until it has judged the primary, runs the
test and stops it again.

Ctrl-C asks for a stop: the test restores the normal state and the report (marked
interrupted) is still printed. A second Ctrl-C leaves at once; the agent restores all
the same (it sees the connection close), and a crash is restored at the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, TextIO

from agent.clock import Clock
from agent.control import socket_path
from agent.domain import LinkRole, Verdict
from agent.installer import render
from agent.instance import agent_running

if TYPE_CHECKING:
    from agent.config import Settings
    from agent.runtime import Agent

#: How long to wait for a running agent's socket (it may be starting) ...
CONNECT_WAIT_S = 10.0
#: ... and, in-process, for the first verdict on the primary.
FIRST_VERDICT_WAIT_S = 20.0
#: After a Ctrl-C: how long the restore may take before the command leaves anyway.
RESTORE_WAIT_S = 30.0


class TestCommandError(Exception):
    """The test could not be run at all; the message is the sentence a person sees."""

    __test__ = False  # not a pytest class, whatever its name


class _Printer:
    """Prints the checklist as it fills in (a person) or nothing until the end (--json)."""

    def __init__(self, as_json: bool, out: TextIO) -> None:
        self.as_json = as_json
        self.out = out
        self.tty = out.isatty() and not as_json
        self._pending = False

    def __call__(self, message: dict[str, Any]) -> None:
        if self.as_json:
            return
        kind = message.get("type")
        if kind == "step_started" and self.tty:
            self._clear()
            self.out.write(render.running_line(str(message.get("name"))))
            self.out.flush()
            self._pending = True
        elif kind == "step":
            self._clear()
            for line in render.step_lines(message["step"]):
                self.out.write(line + "\n")
            self.out.flush()
        elif kind == "note":
            self._clear()
            self.out.write(str(message.get("text")) + "\n")
            self.out.flush()

    def _clear(self) -> None:
        if self._pending:
            self.out.write("\r\033[K")
            self._pending = False

    def report(self, report: dict[str, Any], code: int) -> None:
        self._clear()
        if self.as_json:
            self.out.write(json.dumps({**report, "exit_code": code}, sort_keys=True) + "\n")
        else:
            for line in render.summary_lines(report):
                self.out.write(line + "\n")
        self.out.flush()


async def run_command(
    settings: Settings,
    *,
    force: bool,
    max_duration_s: float | None,
    as_json: bool,
    out: TextIO = sys.stdout,
) -> int:
    printer = _Printer(as_json, out)
    state_dir = settings.agent.state_dir
    if agent_running(state_dir):
        report, cancelled = await _through_agent(settings, force, max_duration_s, printer)
    else:
        report, cancelled = await _in_process(settings, force, max_duration_s, printer)
    code = render.exit_code(report, cancelled)
    printer.report(report, code)
    return code


# -- through the running agent ---------------------------------------------------------


async def _through_agent(
    settings: Settings, force: bool, max_duration_s: float | None, printer: _Printer
) -> tuple[dict[str, Any], bool]:
    path = socket_path(settings.agent.runtime_dir)
    reader, writer = await _connect(str(path))
    request = {"op": "failover_test", "force": force, "max_duration_s": max_duration_s}
    writer.write(json.dumps(request).encode() + b"\n")
    await writer.drain()
    cancelled = False

    def on_interrupt() -> None:
        nonlocal cancelled
        if cancelled:
            raise KeyboardInterrupt  # the second Ctrl-C: leave; the agent restores
        cancelled = True
        printer({"type": "note", "text": "Stopping: restoring the normal state ..."})
        with contextlib.suppress(Exception):
            writer.write(b'{"op": "cancel"}\n')

    with _on_sigint(on_interrupt):
        try:
            while True:
                line = await reader.readline()
                if not line:
                    raise TestCommandError(
                        "the agent closed the connection before the report; see its log "
                        "(journalctl -u cpe-agent) and run `cpe-agent status`"
                    )
                message = json.loads(line)
                kind = message.get("type")
                if kind == "started":
                    printer(
                        {
                            "type": "note",
                            "text": render.header(
                                settings.agent.device_id, message["options"], "the running agent"
                            ),
                        }
                    )
                elif kind == "error":
                    raise TestCommandError(str(message.get("message")))
                elif kind == "report":
                    return dict(message["report"]), cancelled
                else:
                    printer(message)
        finally:
            writer.close()


async def _connect(path: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    clock = Clock()
    deadline = clock.monotonic() + CONNECT_WAIT_S
    while True:
        try:
            return await asyncio.open_unix_connection(path)
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            if clock.monotonic() >= deadline:
                raise TestCommandError(
                    f"the agent runs but does not answer on {path}; restart it "
                    "(systemctl restart cpe-agent) and try again"
                ) from exc
            await clock.sleep(0.2)


# -- in this process ---------------------------------------------------------------------


async def _in_process(
    settings: Settings, force: bool, max_duration_s: float | None, printer: _Printer
) -> tuple[dict[str, Any], bool]:
    from agent.app import run_agent  # the composition root, only when it is needed

    outcome: dict[str, Any] = {}
    cancelled = False

    async def test(agent: Agent) -> None:
        nonlocal cancelled
        await _first_verdict(agent)
        options = agent.installer.options(force=force, max_duration_s=max_duration_s)
        printer(
            {
                "type": "note",
                "text": render.header(
                    settings.agent.device_id,
                    {
                        "max_duration_s": options.max_duration_s,
                        "max_lte_bytes": options.max_lte_bytes,
                    },
                    "no agent running: the test runs in this process",
                ),
            }
        )
        task = agent.installer.start(options, printer)

        def on_interrupt() -> None:
            nonlocal cancelled
            if cancelled:
                raise KeyboardInterrupt
            cancelled = True
            printer({"type": "note", "text": "Stopping: restoring the normal state ..."})
            task.cancel()

        with _on_sigint(on_interrupt):
            report = await asyncio.wait_for(asyncio.shield(task), options.max_duration_s + 30)
        outcome["report"] = report.to_dict()

    await run_agent(settings, then=test, handle_signals=False)
    if "report" not in outcome:
        raise TestCommandError("the agent stopped before the test ended; see the messages above")
    return outcome["report"], cancelled


async def _first_verdict(agent: Agent) -> None:
    """The state machine needs to know the primary before it may leave it on purpose."""
    deadline = agent.clock.monotonic() + FIRST_VERDICT_WAIT_S
    while agent.link_verdict(LinkRole.PRIMARY) is Verdict.UNKNOWN:
        if agent.clock.monotonic() >= deadline:
            break  # the test's own step says the primary is not healthy
        await agent.clock.sleep(0.1)


@contextlib.contextmanager
def _on_sigint(handler: Callable[[], None]) -> Iterator[None]:
    loop = asyncio.get_running_loop()
    installed = False
    with contextlib.suppress(NotImplementedError, RuntimeError):
        loop.add_signal_handler(signal.SIGINT, handler)
        installed = True
    try:
        yield
    finally:
        if installed:
            loop.remove_signal_handler(signal.SIGINT)
