"""The carrier watch: `/interface/listen` on an API session of its own.

A listen never ends, so it cannot share the control session (one command in flight) and
is read sentence by sentence here instead of as a whole reply. The listen is started
before the dump of the interfaces, on the same session, so no change falls between
them; after a failure the watch reconnects, dumps again and reports what changed
meanwhile. A keepalive after WATCH_KEEPALIVE_S of silence finds a dead connection (a
router that lost power sends no FIN). A router that reboots is normal: the watch keeps
trying, backing off; only what needs a human ends it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from drivers.errors import NeedsHumanError, RetryableError
from drivers.types import LinkEvent

from . import commands as c
from . import parse
from .transport import UNREACHABLE_REMEDY, ApiTrap, Endpoint, Session, errors, login, words_for

log = logging.getLogger(__name__)

WATCH_KEEPALIVE_S = 15.0
#: Failed reconnects between two log lines (the first is always logged).
WATCH_LOG_EVERY = 20

T = TypeVar("T")


class Stream:
    """One session for a command that never ends (`/interface/listen`), read sentence by
    sentence. Its own connection and thread, so the control channel is never blocked."""

    def __init__(self, ep: Endpoint, name: str = "watch") -> None:
        self.ep = ep
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"routeros-{name}")
        self._session: Session | None = None

    async def _run(self, fn: Callable[..., T], *args: Any, deadline_s: float) -> T:
        """`fn` on the worker thread, under a deadline (TimeoutError).

        Waits with asyncio.wait, never asyncio.wait_for: on Python 3.11 a cancellation
        that lands after the worker's result is in but before this task resumes makes
        wait_for return the result and drop the cancellation; the listen reads every
        second, so a cancelled watch kept running.
        """
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._executor, fn, *args)
        # An abandoned worker's error (the read that an abort ended) is nobody's to log.
        future.add_done_callback(_consume)
        try:
            done, _ = await asyncio.wait({future}, timeout=deadline_s)
            if not done:
                raise TimeoutError
            return future.result()
        except BaseException:
            if self._session is not None:
                self._session.abort()
            # Give the worker a moment to notice the abort; a second cancellation goes
            # through (asyncio.wait never swallows one).
            await asyncio.wait({future}, timeout=2.0)
            raise

    async def open(self) -> None:
        with errors(self.ep, "log in", connecting=True):
            try:
                self._session = await self._run(login, self.ep, deadline_s=self.ep.timeout_s * 3)
            except TimeoutError as exc:
                raise RetryableError(
                    f"The router at {self.ep.describe()} did not complete the login; the "
                    "agent retries.", remedy=UNREACHABLE_REMEDY) from exc

    async def send(self, command: str, args: Mapping[str, str] | None = None, *,
                   tag: str) -> None:
        session = self._require()
        with errors(self.ep, f"run {command}"):
            await self._run(session.write, command, words_for(args, tag=tag),
                            deadline_s=self.ep.timeout_s)

    async def next(self, idle_s: float) -> tuple[str, str | None, dict[str, str]] | None:
        """The next sentence as (reply word, tag, attributes), or None after `idle_s`
        without one."""
        session = self._require()

        def read() -> tuple[str, tuple[str, ...]] | None:
            if not session.wait_readable(idle_s):
                return None
            return session.read()

        with errors(self.ep, "watch the interfaces"):
            try:
                sentence = await self._run(read, deadline_s=idle_s + self.ep.timeout_s)
            except TimeoutError as exc:
                raise RetryableError(f"The router at {self.ep.describe()} stopped in the "
                                     "middle of a reply; the agent reconnects.") from exc
        if sentence is None:
            return None
        word, words = sentence
        return word, parse.tag_of(words), parse.attributes(words)

    def _require(self) -> Session:
        if self._session is None or self._session.closed:
            raise RetryableError("The watch session is closed; the agent reopens it.")
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            self._session.abort()
            self._session = None
        self._executor.shutdown(wait=False, cancel_futures=True)


async def carrier_events(ep: Endpoint, backoff: tuple[float, float]
                         ) -> AsyncIterator[LinkEvent]:
    """Carrier changes of every interface, as they happen (see the module doc)."""
    known: dict[str, bool] | None = None
    failures = 0
    while True:
        stream = Stream(ep)
        try:
            await stream.open()
            await stream.send(f"{c.INTERFACE}/listen", tag="listen")
            await stream.send(f"{c.INTERFACE}/print",
                              {".proplist": ".id,name,running,disabled"}, tag="dump")
            names, current, early = await _dump(stream, ep.timeout_s)
            for event in parse.carrier_resync(known if known is not None else current,
                                              current):
                yield event
            known = current
            failures = 0
            for attrs in early:  # changes seen while the dump was on its way
                for event in parse.carrier_change(known, names, attrs):
                    yield event
            async for attrs in _listen(stream):
                for event in parse.carrier_change(known, names, attrs):
                    yield event
        except RetryableError as exc:
            failures += 1
            if failures == 1 or failures % WATCH_LOG_EVERY == 0:
                log.warning("carrier watch restarts after: %s", exc)
            await asyncio.sleep(min(backoff[1], backoff[0] * 2 ** failures))
        finally:
            await stream.close()


async def _dump(stream: Stream, timeout_s: float
                ) -> tuple[dict[str, str], dict[str, bool], list[dict[str, str]]]:
    """(.id -> name, name -> carrier, listen items that arrived meanwhile)."""
    names: dict[str, str] = {}
    current: dict[str, bool] = {}
    early: list[dict[str, str]] = []
    while True:
        got = await stream.next(timeout_s)
        if got is None:
            raise RetryableError("The router did not answer the interface dump; the agent "
                                 "reconnects.", remedy=UNREACHABLE_REMEDY)
        word, tag, attrs = got
        if tag == "listen":
            _listen_failed(word, attrs)
            if word == "!re":
                early.append(attrs)
        elif tag == "dump":
            if word == "!re":
                names[attrs.get(".id", "")] = attrs.get("name", "")
                current[attrs.get("name", "")] = parse.carrier_up(attrs)
            elif word == "!trap":
                raise ApiTrap(f"{c.INTERFACE}/print", [(attrs.get("message", ""), None)])
            elif word == "!done":
                return names, current, early


async def _listen(stream: Stream) -> AsyncIterator[dict[str, str]]:
    """The listen's items, with a keepalive on silence; raises when the session dies."""
    silent_s = 0.0
    waiting = False
    while True:
        got = await stream.next(1.0)
        if got is None:
            silent_s += 1.0
            if silent_s >= WATCH_KEEPALIVE_S:
                if waiting:
                    raise RetryableError("The router stopped answering on the watch session; "
                                         "the agent reconnects.", remedy=UNREACHABLE_REMEDY)
                await stream.send("/system/identity/print", tag="keepalive")
                waiting, silent_s = True, 0.0
            continue
        silent_s = 0.0
        word, tag, attrs = got
        if tag == "keepalive":
            waiting = waiting and word != "!done"
            continue
        if tag != "listen":
            continue
        _listen_failed(word, attrs)
        if word == "!done":
            raise RetryableError("The router ended the interface watch; the agent restarts it.",
                                 remedy=UNREACHABLE_REMEDY)
        if word == "!re":
            yield attrs


def _consume(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


def _listen_failed(word: str, attrs: Mapping[str, str]) -> None:
    if word == "!trap":
        message = attrs.get("message", "")
        if "not enough permissions" in message:
            raise NeedsHumanError("The router refused /interface/listen: the agent's user "
                                  "lacks the read policy; add it to the group.")
        raise RetryableError(f"The router refused /interface/listen: {message}.")
