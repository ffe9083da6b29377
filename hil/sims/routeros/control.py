"""The side channel over TCP, for a simulator running in another process.

One JSON object per line in, one per line out:

    -> {"op": "add_traffic", "args": {"interface": "ether10", "rx_bytes": 1500}}
    <- {"ok": true, "result": null}
    <- {"ok": false, "error": "KeyError: \"no interface 'ether99'\""}

`op` is one of OPS (the RouterOSSim methods of the same name).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .sim import RouterOSSim

OPS = frozenset({
    "add_traffic", "set_counters", "set_running", "add_connection", "update_connection",
    "expire_connection", "connections", "set_ping", "clear_ping", "slow", "clear_slow",
    "drop_connections", "reboot", "snapshot", "items", "add_item", "add_user",
    "set_group_policy", "status", "command_log",
})


class ControlServer:
    def __init__(self, sim: RouterOSSim) -> None:
        self.sim = sim
        self.server: asyncio.base_events.Server | None = None

    async def listen(self, host: str, port: int) -> tuple[str, int]:
        self.server = await asyncio.start_server(self._handle, host, port)
        name = self.server.sockets[0].getsockname()
        return name[0], name[1]

    async def close(self) -> None:
        if self.server:
            self.server.close()
            with contextlib.suppress(Exception):
                await self.server.wait_closed()

    def call(self, op: str, args: dict[str, Any]) -> Any:
        if op not in OPS:
            raise ValueError(f"unknown op {op!r}")
        if op == "status":
            sim = self.sim
            return {"profile": sim.profile.name, "model": sim.model.key,
                    "address": list(sim.address), "clients": sim.client_count}
        if op == "command_log":
            return list(self.sim.command_log)
        return getattr(self.sim, op)(**args)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                try:
                    msg = json.loads(line)
                    result = self.call(msg["op"], msg.get("args") or {})
                    reply = {"ok": True, "result": result}
                except Exception as exc:  # every failure goes back to the caller
                    reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
                writer.write(json.dumps(reply).encode() + b"\n")
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()


def control_call(host: str, port: int, op: str, timeout: float = 5.0, **args: Any) -> Any:
    """Blocking client for the control port (for tests and scripts)."""
    import socket

    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(json.dumps({"op": op, "args": args}).encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("control connection closed")
            buf += chunk
    reply = json.loads(buf)
    if not reply["ok"]:
        raise RuntimeError(reply["error"])
    return reply["result"]
