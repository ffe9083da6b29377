"""RouterOSSim: the simulator's front door, and its side channel for tests and the lab.

In process:

    with RouterOSSim(profile="7.18", model="RB2011", user="agent", password="s3cret") as sim:
        host, port = sim.address
        sim.add_traffic("ether10", rx_bytes=1500)

Every side-channel method is thread-safe: the API server runs its own asyncio loop in
a daemon thread; the configuration database takes a lock.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
import time
from collections import deque
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from . import lte
from .control import ControlServer
from .db import ConfigDB, format_duration, format_id
from .menus import build_tree
from .pingtool import PingAnswer
from .profiles import get_model, get_profile
from .seed import seed
from .server import ApiServer, Command, Session

CONNECTIONS = "/ip/firewall/connection"


@dataclass
class SlowRule:
    delay_s: float
    remaining: int | None  # None: until cleared
    path: str | None  # command-word prefix, e.g. "/interface" or "/ip/route/print"


class RouterOSSim:
    def __init__(self, profile: str = "7.18", model: str = "RB2011", user: str = "admin",
                 password: str = "", group: str = "full", *, host: str = "127.0.0.1",
                 port: int = 0, tls_cert: str | None = None, tls_key: str | None = None,
                 tls_port: int = 0, control_port: int | None = None,
                 ping_time_scale: float = 1.0) -> None:
        self.profile = get_profile(profile)
        self.model = get_model(model, self.profile)
        self.tree = build_tree(self.profile)
        if self.model.has_lte:
            lte.install(self.tree, self.profile)
        self.db = ConfigDB(self.profile, self.tree)
        seed(self.db, self.profile, self.model, user, password, group)
        #: The built-in LTE modem (Chateau-LTE); None on models without one.
        self.lte: lte.LteModem | None = None
        if self.model.has_lte:
            lte.seed(self.db)
            self.lte = lte.LteModem()
        self.db.render_hooks["/system/resource"] = self._resource_hook
        self.ping_time_scale = ping_time_scale
        self.command_log: list[dict[str, Any]] = []
        self._host, self._port = host, port
        self._tls = (tls_cert, tls_key, tls_port) if tls_cert and tls_key else None
        self._control_port = control_port
        self._boot = time.monotonic()
        self._down_until = 0.0
        self._ping: dict[tuple[str, str | None, str | None], PingAnswer] = {}
        self._slow: list[SlowRule] = []
        self._traffic: dict[str, deque[tuple[float, int, int, int, int]]] = {}
        self._state_lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server = ApiServer(self)
        self.address: tuple[str, int] = ("", 0)
        self.tls_address: tuple[str, int] | None = None
        self.control_address: tuple[str, int] | None = None

    # ---- lifecycle -------------------------------------------------------------------

    def start(self) -> tuple[str, int]:
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(target=loop.run_forever, name="routeros-sim",
                                        daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._listen(), loop).result(timeout=10)
        return self.address

    async def _listen(self) -> None:
        self.address = await self._server.listen(self._host, self._port)
        if self._tls:
            cert, key, tls_port = self._tls
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(cert, key)
            self.tls_address = await self._server.listen(self._host, tls_port, ctx)
        if self._control_port is not None:
            self._control = ControlServer(self)
            self.control_address = await self._control.listen(self._host, self._control_port)

    def stop(self) -> None:
        loop = self._loop
        if loop is None:
            return
        asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        if self._thread:
            self._thread.join(timeout=10)
        loop.close()
        self._loop = None

    async def _shutdown(self) -> None:
        await self._server.close()
        if self.control_address:
            await self._control.close()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def __enter__(self) -> RouterOSSim:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _call(self, fn: Any, *args: Any) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(fn, *args)

    # ---- used by the API server --------------------------------------------------------

    def is_down(self) -> bool:
        return time.monotonic() < self._down_until

    def authenticate(self, name: str, password: str | None) -> str | None:
        with self.db.lock:
            user = self.db.find("/user", name) if name and not name.startswith("*") else None
            if user is None or user.props.get("disabled") == "true":
                return None
            if user.props.get("password", "") != (password or ""):
                return None
        return name if "api" in self.policies(name) else None

    def policies(self, user: str) -> set[str]:
        with self.db.lock:
            item = self.db.find("/user", user)
            group = self.db.find("/user/group", item.props.get("group", "")) if item else None
            policy = group.props.get("policy", "") if group else ""
        return {p for p in policy.split(",") if p and not p.startswith("!")}

    def session_opened(self, session: Session) -> None:
        when = self.profile.format_datetime(datetime.now())
        props = {"name": session.user or "", "when": when, "address": session.peer,
                 "via": "api", "radius": "false"}
        with self.db.lock:
            user = self.db.find("/user", session.user or "")
            if self.profile.v7 and user is not None:
                props["group"] = user.props.get("group", "")
                user.props["last-logged-in"] = when
            session.active_id = self.db.insert("/user/active", props, persistent=False).id

    def session_closed(self, session: Session) -> None:
        if session.active_id is None:
            return
        with self.db.lock:
            item = self.db.find("/user/active", format_id(session.active_id))
            if item is not None:
                self.db.items["/user/active"].remove(item)
                self.db._notify_dead("/user/active", item)

    def take_delay(self, word: str) -> float:
        delay = 0.0
        with self._state_lock:
            for rule in list(self._slow):
                if rule.path and not word.startswith(rule.path):
                    continue
                delay = max(delay, rule.delay_s)
                if rule.remaining is not None:
                    rule.remaining -= 1
                    if rule.remaining <= 0:
                        self._slow.remove(rule)
        return delay

    def log_command(self, cmd: Command) -> None:
        with self._state_lock:
            self.command_log.append({"user": cmd.session.user, "command": cmd.word,
                                     "args": dict(cmd.args), "queries": list(cmd.queries),
                                     "tag": cmd.tag})

    def schedule_reboot(self) -> None:
        assert self._loop is not None
        self._loop.call_later(0.05, self.reboot)

    def ping_answer(self, host: str, table: str | None, iface: str | None) -> PingAnswer:
        with self._state_lock:
            for key in ((host, table, iface), (host, table, None), (host, None, iface),
                        ("*", table, iface), ("*", table, None), ("*", None, iface),
                        (host, None, None), ("*", None, None)):
                if key in self._ping:
                    return self._ping[key]
        return PingAnswer()

    def traffic_rates(self, name: str) -> dict[str, str]:
        now = time.monotonic()
        with self._state_lock:
            recent = [e for e in self._traffic.get(name, ()) if now - e[0] <= 1.0]
        rx_b, tx_b, rx_p, tx_p = (sum(e[i] for e in recent) for i in range(1, 5))
        return {"name": name, "rx-packets-per-second": str(rx_p),
                "rx-bits-per-second": str(rx_b * 8), "tx-packets-per-second": str(tx_p),
                "tx-bits-per-second": str(tx_b * 8)}

    def _resource_hook(self, _item: object, out: dict[str, str]) -> None:
        out["uptime"] = format_duration(time.monotonic() - self._boot)

    # ---- side channel: counters and links ------------------------------------------------

    def add_traffic(self, interface: str, rx_bytes: int = 0, tx_bytes: int = 0,
                    rx_packets: int | None = None, tx_packets: int | None = None) -> None:
        """Count traffic on an interface (64-bit counters, as RouterOS keeps them)."""
        rx_p = _packets(rx_bytes) if rx_packets is None else rx_packets
        tx_p = _packets(tx_bytes) if tx_packets is None else tx_packets
        with self.db.lock:
            item = self._interface(interface)
            for name, delta in (("rx-byte", rx_bytes), ("tx-byte", tx_bytes),
                                ("rx-packet", rx_p), ("tx-packet", tx_p)):
                item.props[name] = str((int(item.props.get(name, "0")) + delta) % 2**64)
        with self._state_lock:
            q = self._traffic.setdefault(interface, deque(maxlen=1000))
            q.append((time.monotonic(), rx_bytes, tx_bytes, rx_p, tx_p))

    def set_counters(self, interface: str, **values: int) -> None:
        """Set counters outright, e.g. set_counters("ether1", rx_byte=2**64 - 10)."""
        with self.db.lock:
            item = self._interface(interface)
            for name, value in values.items():
                item.props[name.replace("_", "-")] = str(value)

    def set_running(self, interface: str, running: bool) -> None:
        """Carrier up/down; /interface/listen sessions see the change."""
        with self.db.lock:
            item = self._interface(interface)
            was = item.props.get("running") == "true"
            item.props["running"] = "true" if running else "false"
            if was and not running:
                item.props["link-downs"] = str(int(item.props.get("link-downs", "0")) + 1)
            if running and not was:
                item.props["last-link-up-time"] = self.profile.format_datetime(datetime.now())
            self.db._notify("/interface", item)

    def set_lte(self, **values: Any) -> None:
        """The built-in modem's cell, PLMN, signal, registration or network time (fields of
        lte.LteModem: tac=..., cell_id=..., mcc=..., rsrp_dbm=..., network_utc_s=...)."""
        if self.lte is None:
            raise KeyError(f"the {self.model.key} model has no built-in LTE modem")
        with self.db.lock:
            for key, value in values.items():
                if not hasattr(self.lte, key):
                    raise ValueError(f"no LTE field {key}")
                setattr(self.lte, key, value)

    def _interface(self, name: str) -> Any:
        item = self.db.find("/interface", name)
        if item is None:
            raise KeyError(f"no interface {name!r}")
        return item

    # ---- side channel: connection tracking -------------------------------------------------

    def add_connection(self, src: str, dst: str, protocol: str = "udp", timeout_s: float = 180.0,
                       **props: str | int) -> str:
        """Add a conntrack entry; src/dst as "ip:port". Returns its .id."""
        extra = {k.replace("_", "-"): str(v) for k, v in props.items()}
        entry = {
            "protocol": protocol, "src-address": src, "dst-address": dst,
            "reply-src-address": dst, "reply-dst-address": src,
            **({"tcp-state": "established"} if protocol == "tcp" else {}),
            "orig-packets": "1", "orig-bytes": "100", "repl-packets": "1", "repl-bytes": "100",
            "orig-rate": "0", "repl-rate": "0", "assured": "true", "seen-reply": "true",
            "confirmed": "true", "dying": "false", "fasttrack": "false", "srcnat": "false",
            "dstnat": "false", "expected": "false", **extra,
        }
        item = self.db.insert(CONNECTIONS, entry, persistent=False,
                              expires_at=time.monotonic() + timeout_s)
        return format_id(item.id)

    def update_connection(self, conn_id: str, **props: str | int) -> None:
        with self.db.lock:
            item = self.db.find(CONNECTIONS, conn_id)
            if item is None:
                raise KeyError(conn_id)
            item.props.update({k.replace("_", "-"): str(v) for k, v in props.items()})

    def expire_connection(self, conn_id: str | None = None) -> None:
        """Let one entry (or all, with None) time out now."""
        with self.db.lock:
            for item in self.db.items[CONNECTIONS]:
                if conn_id is None or format_id(item.id) == conn_id.upper():
                    item.expires_at = time.monotonic()

    def connections(self) -> list[dict[str, str]]:
        return self.items(CONNECTIONS)

    # ---- side channel: ping, timing, faults -------------------------------------------------

    def set_ping(self, host: str = "*", rtt_ms: float | None = 10.0, *,
                 pattern: tuple[float | None, ...] | list[float | None] | None = None,
                 status: str = "timeout", routing_table: str | None = None,
                 interface: str | None = None) -> None:
        """How `host` answers /ping (host "*" = every host); rtt_ms=None: no answer."""
        answer = PingAnswer(rtt_ms, tuple(pattern) if pattern else None, status)
        with self._state_lock:
            self._ping[(host, routing_table, interface)] = answer

    def clear_ping(self) -> None:
        with self._state_lock:
            self._ping.clear()

    def slow(self, delay_s: float, count: int | None = 1, path: str | None = None) -> None:
        """Delay the next `count` commands (None: all, until clear_slow) matching `path`."""
        with self._state_lock:
            self._slow.append(SlowRule(delay_s, count, path))

    def clear_slow(self) -> None:
        with self._state_lock:
            self._slow.clear()

    def drop_connections(self, fatal: str | None = None) -> None:
        """Close every API connection (after a `!fatal <reason>` if given)."""
        self._call(self._server.drop_all, fatal)

    def reboot(self, downtime_s: float = 0.0) -> None:
        """Counters to zero, non-persistent entries gone, uptime restarts, clients dropped.

        For `downtime_s` new connections are closed at once, as while the router boots.
        """
        self._down_until = time.monotonic() + downtime_s
        self._boot = time.monotonic() + downtime_s
        self.db.reboot()
        with self._state_lock:
            self._traffic.clear()
        self._call(self._server.drop_all, None)

    @property
    def client_count(self) -> int:
        return len(self._server.sessions)

    @property
    def commands_in_flight(self) -> int:
        """Commands still running (listen, ping without count, slowed ones)."""
        return sum(len(s.running) for s in list(self._server.sessions))

    @property
    def listeners(self) -> int:
        """`listen` commands registered for change notifications."""
        return len(self.db.listeners)

    # ---- side channel: reading and seeding configuration -----------------------------------

    def snapshot(self) -> dict[str, list[dict[str, str]]]:
        """The whole configuration as print would show it, menu by menu."""
        return self.db.snapshot()

    def items(self, path: str) -> list[dict[str, str]]:
        return self.db.print(path, [], None)

    def add_item(self, path: str, **props: str) -> str:
        """Add configuration as a human would (same checks as the API's add)."""
        return self.db.add(path, {k.replace("_", "-"): v for k, v in props.items()})

    def add_user(self, name: str, password: str, group: str) -> None:
        self.db.add("/user", {"name": name, "password": password, "group": group})

    def set_group_policy(self, group: str, policy: str) -> None:
        with self.db.lock:
            item = self.db.find("/user/group", group)
            if item is None:
                self.db.add("/user/group", {"name": group, "policy": policy})
            else:
                item.props["policy"] = policy


def _packets(n_bytes: int) -> int:
    return 0 if n_bytes <= 0 else max(1, n_bytes // 1500)
