"""The running agent's control socket: how `cpe-agent failover-test` asks the agent that
owns the router to run the test, and watches it fill in.

A Unix socket in the runtime dir (mode 0600: root, like the agent), one JSON object a
line. The client sends one request:

    {"op": "failover_test", "force": false, "max_duration_s": 120}

and reads `{"type": "step_started", "name": ...}` and `{"type": "step", "step": {...}}`
lines as the test goes, then `{"type": "report", "report": {...}}`, or
`{"type": "error", "message": ..., "busy": bool}`. To stop the test the client sends
`{"op": "cancel"}` or just closes the connection: the agent restores the normal state
either way and (if the connection is still open) sends the report, marked interrupted.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.installer.service import TestBusyError

if TYPE_CHECKING:
    from agent.runtime import Agent

log = logging.getLogger(__name__)

CONTROL_SOCKET = "control.sock"
MAX_REQUEST_BYTES = 4096


def socket_path(runtime_dir: Path) -> Path:
    return runtime_dir / CONTROL_SOCKET


class ControlServer:
    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.path = socket_path(agent.settings.agent.runtime_dir)
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.unlink(missing_ok=True)  # a stale socket from a crash: ours to replace
        old_umask = os.umask(0o177)
        try:
            self._server = await asyncio.start_unix_server(
                self._handle, path=str(self.path), limit=MAX_REQUEST_BYTES
            )
        finally:
            os.umask(old_umask)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
        self.path.unlink(missing_ok=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await self._serve(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except Exception:
            log.exception("control connection failed")
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = json.loads(await reader.readline())
            if not isinstance(request, dict):
                raise ValueError("not an object")
        except ValueError:
            await _send(
                writer,
                {
                    "type": "error",
                    "message": "the request is not one JSON "
                    "object on one line; use `cpe-agent failover-test`",
                },
            )
            return
        if request.get("op") != "failover_test":
            await _send(
                writer, {"type": "error", "message": f"unknown request {request.get('op')!r}"}
            )
            return
        max_s = request.get("max_duration_s")
        options = self.agent.installer.options(
            force=bool(request.get("force", False)),
            max_duration_s=float(max_s) if isinstance(max_s, int | float) else None,
        )
        lines: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        try:
            test = self.agent.installer.start(options, lines.put_nowait)
        except TestBusyError as exc:
            await _send(writer, {"type": "error", "message": str(exc), "busy": True})
            return
        await _send(
            writer,
            {
                "type": "started",
                "options": {
                    "force": options.force,
                    "max_duration_s": options.max_duration_s,
                    "max_lte_bytes": options.max_lte_bytes,
                },
            },
        )
        watch = asyncio.create_task(_cancel_on_request(reader, test))
        try:
            while not (test.done() and lines.empty()):
                getter = asyncio.create_task(lines.get())
                await asyncio.wait({getter, test}, return_when=asyncio.FIRST_COMPLETED)
                if getter.done():
                    await _send(writer, getter.result())
                else:
                    getter.cancel()
            report = test.result()
            await _send(writer, {"type": "report", "report": report.to_dict()})
        finally:
            watch.cancel()
            if not test.done():  # the client is gone: stop, restore, keep the report
                test.cancel()


async def _cancel_on_request(reader: asyncio.StreamReader, test: asyncio.Task[Any]) -> None:
    """A cancel line, or the client gone (EOF: Ctrl-C, a killed terminal), stops the test."""
    while not test.done():
        line = await reader.readline()
        if not line:
            break
        with contextlib.suppress(ValueError):
            if json.loads(line).get("op") == "cancel":
                break
    if not test.done():
        log.warning("failover test cancelled by the installer; restoring the normal state")
        test.cancel()


async def _send(writer: asyncio.StreamWriter, message: dict[str, Any]) -> None:
    writer.write(json.dumps(message).encode() + b"\n")
    await writer.drain()
