"""The API server: sessions, login, command dispatch, tags, /cancel and streaming commands.

One asyncio loop (in the simulator's own thread). Every command runs as a task, so
tagged commands can be in flight together; replies of a tagged command carry its
`.tag`, placed right after the reply word as in librouteros' wire captures
(docs/api_analysis.rst in luqasz/librouteros).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from . import lte, wire
from .db import Trap
from .pingtool import run_ping

if TYPE_CHECKING:
    from .sim import RouterOSSim

NOT_LOGGED_IN = "not logged in"
BAD_LOGIN = "invalid user name or password (6)"
NO_PERMISSION = "not enough permissions (9)"
PRINT_FLAGS = {"detail", "count-only", "stats", "without-paging", "terse", "brief",
               "show-ids", "oid", "from", "where", "interval", "follow", "follow-only",
               "as-value", "value-list", "append", "file"}
MAX_PRELOGIN_WORD = 64 * 1024
MAX_WORD = 64 * 1024 * 1024


@dataclass
class Command:
    session: Session
    word: str
    path: str  # the menu or directory, e.g. /ip/route
    name: str  # the command, e.g. print
    args: dict[str, str]
    queries: list[str]
    tag: str | None

    async def send(self, reply: str, attrs: Mapping[str, str] | None = None) -> None:
        words = [reply]
        if self.tag:
            words.append(f".tag={self.tag}")
        words += [f"={k}={v}" for k, v in (attrs or {}).items()]
        await self.session.send(words)

    async def done(self, attrs: Mapping[str, str] | None = None) -> None:
        await self.send("!done", attrs)

    async def trap(self, trap: Trap) -> None:
        for message, category in trap.traps:
            attrs = {"category": category} if category is not None else {}
            attrs["message"] = message
            await self.send("!trap", attrs)
        await self.done()


@dataclass(eq=False)
class Session:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    peer: str
    user: str | None = None
    active_id: int | None = None
    running: dict[object, tuple[asyncio.Task[None], Command]] = field(default_factory=dict)

    async def send(self, words: list[str]) -> None:
        if self.writer.is_closing():
            return
        self.writer.write(wire.encode_sentence(words))
        with contextlib.suppress(ConnectionError):
            await self.writer.drain()

    def close(self) -> None:
        for task, _ in list(self.running.values()):
            task.cancel()
        if not self.writer.is_closing():
            self.writer.close()


class ApiServer:
    def __init__(self, sim: RouterOSSim) -> None:
        self.sim = sim
        self.sessions: set[Session] = set()
        self.servers: list[asyncio.base_events.Server] = []

    async def listen(self, host: str, port: int, tls: ssl.SSLContext | None = None
                     ) -> tuple[str, int]:
        server = await asyncio.start_server(self._handle, host, port, ssl=tls)
        self.servers.append(server)
        sockname = server.sockets[0].getsockname()
        return sockname[0], sockname[1]

    async def close(self) -> None:
        for server in self.servers:
            server.close()
        self.drop_all()
        for server in self.servers:
            with contextlib.suppress(Exception):
                await server.wait_closed()

    def drop_all(self, fatal: str | None = None) -> None:
        for session in list(self.sessions):
            if fatal is not None and not session.writer.is_closing():
                session.writer.write(wire.encode_sentence(["!fatal", fatal]))
            session.close()

    # ---- connection ------------------------------------------------------------------

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.sim.is_down():
            writer.close()
            return
        peer = writer.get_extra_info("peername")
        session = Session(reader, writer, peer[0] if peer else "")
        self.sessions.add(session)
        try:
            while True:
                limit = MAX_WORD if session.user else MAX_PRELOGIN_WORD
                try:
                    words = await wire.read_sentence(reader, limit)
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                except wire.WireError:
                    return  # not API framing: RouterOS just drops such peers
                if not words:
                    continue  # "Empty sentences are ignored" (API page)
                if not await self._sentence(session, words):
                    return
        except asyncio.CancelledError:
            return  # shutdown; returning (not re-raising) keeps asyncio's stream callback quiet
        finally:
            self.sessions.discard(session)
            session.close()
            self.sim.session_closed(session)

    async def _sentence(self, session: Session, words: list[str]) -> bool:
        cmd = self._parse(session, words)
        if cmd.word == "/quit":
            await session.send(["!fatal", "session terminated on request"])
            return False
        if cmd.word == "/login":
            await self._login(cmd)
            return True
        if session.user is None:
            # A command before login: "!fatal" with the reason, then the router closes.
            await session.send(["!fatal", NOT_LOGGED_IN])
            return False
        if cmd.word == "/cancel":
            await self._cancel(cmd)
            return True
        key: object = cmd.tag if cmd.tag else object()
        task = asyncio.ensure_future(self._run(cmd, key))
        session.running[key] = (task, cmd)
        return True

    def _parse(self, session: Session, words: list[str]) -> Command:
        args: dict[str, str] = {}
        queries: list[str] = []
        tag = None
        for w in words[1:]:
            if w.startswith("="):
                name, _, value = w[1:].partition("=")
                args[name] = value
            elif w.startswith("?"):
                queries.append(w)
            elif w.startswith(".tag="):
                tag = w[5:] or None
        path, _, name = words[0].rpartition("/")
        return Command(session, words[0], path, name, args, queries, tag)

    # ---- login -----------------------------------------------------------------------

    async def _login(self, cmd: Command) -> None:
        name, password = cmd.args.get("name"), cmd.args.get("password")
        if name is None and password is None and "response" not in cmd.args:
            # The pre-6.43 challenge (BenMenking/routeros-api#52: 6.47.6 still sends it).
            await cmd.done({"ret": secrets.token_hex(16)})
            return
        user = self.sim.authenticate(name or "", password)
        if user is None:
            await cmd.trap(Trap(BAD_LOGIN))
            return
        if cmd.session.user is not None:
            self.sim.session_closed(cmd.session)  # logging in again replaces the session
        cmd.session.user = user
        self.sim.session_opened(cmd.session)
        await cmd.done()

    # ---- dispatch --------------------------------------------------------------------

    async def _run(self, cmd: Command, key: object) -> None:
        try:
            delay = self.sim.take_delay(cmd.word)
            if delay:
                await asyncio.sleep(delay)
            await self._execute(cmd)
        except Trap as trap:
            await cmd.trap(trap)
        except asyncio.CancelledError:
            pass
        finally:
            cmd.session.running.pop(key, None)

    def _resolve(self, cmd: Command) -> None:
        tree = self.sim.tree
        if not cmd.word.startswith("/"):
            raise Trap("no such command prefix")
        parts = cmd.word[1:].split("/")
        current = ""
        for part in parts[:-1]:
            nxt = f"{current}/{part}"
            if tree.is_dir(nxt):
                current = nxt
            elif part in tree.commands(current):
                raise Trap("no such command")
            else:
                raise Trap.many((f"no such command or directory ({part})", "0"),
                                ("no such command prefix", None))
        if cmd.name not in tree.commands(cmd.path):
            raise Trap("no such command")

    async def _execute(self, cmd: Command) -> None:
        self._resolve(cmd)
        sim, db = self.sim, self.sim.db
        policies = sim.policies(cmd.session.user or "")
        if cmd.path == "" and cmd.name == "ping":
            self._need(policies, "test")
            await run_ping(sim, cmd)
            return
        if cmd.path == "/system" and cmd.name == "reboot":
            self._need(policies, "reboot")
            await cmd.done()
            sim.schedule_reboot()
            return
        if cmd.path == lte.PATH and cmd.name in ("monitor", "info", "at-chat"):
            self._need(policies, "read" if cmd.name != "at-chat" else "write")
            sim.log_command(cmd)
            assert sim.lte is not None
            await lte.run(sim.lte, db, sim.profile, cmd)
            return
        spec = sim.tree.menus[cmd.path]
        if cmd.name in ("print", "getall", "listen", "monitor-traffic"):
            self._need(policies, "read")
        else:
            self._need(policies, spec.write_policy)
        sim.log_command(cmd)
        if cmd.name in ("print", "getall"):
            await self._print(cmd)
        elif cmd.name == "add":
            await cmd.done({"ret": db.add(cmd.path, cmd.args)})
        elif cmd.name == "set":
            db.set(cmd.path, cmd.args)
            await cmd.done()
        elif cmd.name in ("enable", "disable"):
            db.enable(cmd.path, cmd.args, disabled=cmd.name == "disable")
            await cmd.done()
        elif cmd.name == "remove":
            db.remove(cmd.path, cmd.args)
            await cmd.done()
        elif cmd.name == "move":
            db.move(cmd.path, cmd.args)
            await cmd.done()
        elif cmd.name in ("reset-counters", "reset-counters-all"):
            db.reset_counters(cmd.path, cmd.args)
            await cmd.done()
        elif cmd.name == "listen":
            await self._listen(cmd)
        elif cmd.name == "monitor-traffic":
            await self._monitor_traffic(cmd)
        else:  # pragma: no cover - every command in the specs is handled above
            raise Trap("no such command")

    @staticmethod
    def _need(policies: set[str], policy: str) -> None:
        if policy not in policies:
            raise Trap(NO_PERMISSION)

    async def _print(self, cmd: Command) -> None:
        db = self.sim.db
        proplist = None
        for name in cmd.args:
            if name != ".proplist" and name not in PRINT_FLAGS:
                raise db._unknown(name)
        if ".proplist" in cmd.args:
            proplist = [p for p in cmd.args[".proplist"].split(",") if p]
        rows = db.print(cmd.path, cmd.queries, proplist)
        if "count-only" in cmd.args:
            await cmd.done({"ret": str(len(rows))})
            return
        for row in rows:
            await cmd.send("!re", row)
        if not rows and self.sim.profile.sends_empty:
            await cmd.send("!empty")
        await cmd.done()

    async def _listen(self, cmd: Command) -> None:
        queue: asyncio.Queue[tuple[str, dict[str, str]]] = asyncio.Queue()
        loop = asyncio.get_running_loop()

        def on_change(path: str, item: dict[str, str]) -> None:
            if path == cmd.path:
                loop.call_soon_threadsafe(queue.put_nowait, (path, item))

        self.sim.db.listeners.append(on_change)
        try:
            while True:
                _, item = await queue.get()
                await cmd.send("!re", item)
        finally:
            self.sim.db.listeners.remove(on_change)

    async def _monitor_traffic(self, cmd: Command) -> None:
        names = [n for n in cmd.args.get("interface", "").split(",") if n]
        for name in cmd.args:
            if name not in ("interface", "once", "duration", ".proplist", "interval"):
                raise self.sim.db._unknown(name)
        if not names:
            raise Trap("missing value(s) of argument(s) interface")
        for n in names:
            if self.sim.db.find("/interface", n) is None:
                raise Trap("input does not match any value of interface", "1")
        while True:
            for n in names:
                await cmd.send("!re", self.sim.traffic_rates(n))
            if "once" in cmd.args:
                await cmd.done()
                return
            await asyncio.sleep(1.0)

    async def _cancel(self, cmd: Command) -> None:
        """librouteros docs/api_analysis.rst: the cancelled command gets
        `!trap =category=2 =message=interrupted`, /cancel its `!done`, then the
        cancelled command its own `!done`."""
        target = cmd.args.get("tag")
        victims = [(k, t, c) for k, (t, c) in list(cmd.session.running.items())
                   if target is None or k == target]
        for key, task, victim in victims:
            task.cancel()
            cmd.session.running.pop(key, None)
            await victim.send("!trap", {"category": "2", "message": "interrupted"})
        await cmd.done()
        for _, _, victim in victims:
            await victim.done()
