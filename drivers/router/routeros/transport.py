"""The RouterOS API transport: the only module in the project that imports librouteros.

librouteros 4.2.2 (pinned) is used for what it does well: the socket, TLS, login and
the word framing. Its quirks, and how this module deals with them:

- It converts reply values: "yes"/"true" -> True, integer-looking words -> int. Here
  sentences are read with `protocol.readSentence()`, below that conversion, so every
  value stays the string the router sent (parse.reply folds them).
- It reads whole replies and has no deadline of its own beyond the socket timeout: each
  command runs under an overall deadline here; on expiry the socket is shut down (which
  unblocks the worker thread) and the session is dropped, so a late reply can never be
  mistaken for the next command's.
- It is blocking and not thread-safe: each Channel owns one worker thread (a one-thread
  executor, so the library object is only ever touched from that thread) and an
  asyncio.Lock, so exactly one command is in flight per session. (Its AsyncApi cancels a
  read mid-sentence on timeout and leaves the stream undefined; the thread is simpler.)
- It decodes words as ASCII and silently drops other bytes: here latin-1, which keeps
  every byte (a customer's UTF-8 comment survives as mojibake and is never written back).

Security: api-ssl (8729) with certificate verification by default; the plain API (8728)
only when configured, with a warning, because it sends the password and config in clear.
Reconnects back off exponentially after failed connects (not after a dropped session:
the first reconnect is immediate).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import select
import socket
import ssl
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import librouteros
from librouteros.exceptions import (
    ConnectionClosed,
    FatalError,
    LibRouterosError,
    MultiTrapError,
    TrapError,
)

from drivers.errors import DeviceReplyError, DriverError, NeedsHumanError, RetryableError

from . import parse

log = logging.getLogger(__name__)

API_SSL_PORT = 8729
API_PORT = 8728
ENCODING = "latin-1"
BACKOFF_MIN_S = 0.5
BACKOFF_MAX_S = 30.0
UNREACHABLE_REMEDY = (
    "The agent retries by itself; if it persists, check that the router is on, reachable "
    "from the agent, and that its api-ssl service is enabled (/ip service)."
)
TRAP_REMEDY = "The agent retries; if it keeps failing, report the message and raw reply."

T = TypeVar("T")


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int
    username: str
    password: str
    tls: ssl.SSLContext | None
    timeout_s: float

    def describe(self) -> str:
        return f"{self.host}:{self.port} ({'api-ssl' if self.tls else 'plain API'})"


def endpoint(host: str | None, port: int | None, username: str | None, password: str | None,
             *, plain_api: bool = False, tls_ca_file: str | Path | None = None,
             tls_verify: bool = True, timeout_s: float = 10.0) -> Endpoint:
    """Check the connection settings and build the TLS context (no I/O but the CA file)."""
    if not host:
        raise NeedsHumanError("The RouterOS driver needs the router's address; set router.host.")
    if not username:
        raise NeedsHumanError(
            "The RouterOS driver needs a user name; set router.username (a user in a group "
            "with policy api,read,write,test)."
        )
    tls: ssl.SSLContext | None = None
    if plain_api:
        log.warning(
            "router %s: using the plain RouterOS API (no TLS): the password and the "
            "configuration cross the LAN in clear; prefer api-ssl (8729)", host)
    else:
        try:
            tls = ssl.create_default_context(cafile=str(tls_ca_file) if tls_ca_file else None)
        except (OSError, ssl.SSLError) as exc:
            raise NeedsHumanError(
                f"The CA file {tls_ca_file} cannot be read ({exc}); fix router.tls_ca_file."
            ) from exc
        if not tls_verify:
            log.warning(
                "router %s: api-ssl certificate verification is OFF: anyone on the LAN can "
                "impersonate the router; set router.tls_ca_file instead", host)
            tls.check_hostname = False
            tls.verify_mode = ssl.CERT_NONE
    return Endpoint(host, port or (API_PORT if plain_api else API_SSL_PORT), username,
                    password or "", tls, float(timeout_s))


class ApiTrap(DeviceReplyError):
    """The router answered a command with `!trap` (the session stays usable)."""

    def __init__(self, command: str, traps: Sequence[tuple[str, str | None]]) -> None:
        self.command = command
        self.traps = list(traps)
        self.message = parse.trap_text(self.traps)
        super().__init__(
            f"The router refused {command}: {self.message}.",
            raw=" | ".join(f"!trap category={c} message={m}" for m, c in self.traps),
            remedy=TRAP_REMEDY,
        )

    def says(self, text: str) -> bool:
        return any(text in message for message, _ in self.traps)


# --- one session (blocking; used from its channel's worker thread) ---------------------


class Session:
    """One logged-in API connection. Blocking; one thread at a time."""

    def __init__(self, api: librouteros.Api) -> None:
        self.api = api
        self.closed = False

    @property
    def sock(self) -> socket.socket:
        return self.api.protocol.transport.sock

    def write(self, command: str, words: Sequence[str]) -> None:
        self.api.protocol.writeSentence(command, *words)

    def read(self) -> tuple[str, tuple[str, ...]]:
        while True:
            try:
                return self.api.protocol.readSentence()
            except IndexError:  # an empty sentence: "Empty sentences are ignored"
                continue

    def run(self, command: str, words: Sequence[str]) -> parse.Reply:
        """Send one command and read its sentences up to `!done`, values as strings."""
        self.write(command, words)
        sentences = []
        while True:
            sentence = self.read()
            sentences.append(sentence)
            if sentence[0] == "!done":
                return parse.reply(sentences)

    def wait_readable(self, idle_s: float) -> bool:
        sock = self.sock
        if isinstance(sock, ssl.SSLSocket) and sock.pending():
            return True
        readable, _, _ = select.select([sock], [], [], idle_s)
        return bool(readable)

    def stale(self) -> bool:
        """Whether an idle session has heard from the router: an idle session should hear
        nothing, so anything readable is a `!fatal` or the close of a reboot."""
        if self.closed:
            return True
        try:
            return self.wait_readable(0)
        except (OSError, ValueError):
            return True

    def abort(self) -> None:
        """From any thread: unblock a read in progress and close the connection."""
        self.closed = True
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError, LibRouterosError):
            self.api.close()


def _consume(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


def _close_abandoned_login(future: asyncio.Future[Any]) -> None:
    """A login that succeeded after all (as its deadline passed or a cancel came): nobody
    holds that session, so close it rather than leave the connection open."""
    if not future.cancelled() and future.exception() is None:
        made = future.result()
        if isinstance(made, Session):
            made.abort()


def words_for(args: Mapping[str, str] | None, queries: Sequence[str] = (),
              proplist: Sequence[str] | None = None, tag: str | None = None) -> list[str]:
    words = [f"={k}={v}" for k, v in (args or {}).items()]
    if proplist:
        words.append("=.proplist=" + ",".join(proplist))
    words += list(queries)
    if tag:
        words.append(f".tag={tag}")
    return words


def login(ep: Endpoint) -> Session:
    wrapper = None
    tls = ep.tls
    if tls is not None:
        def wrapper(sock: socket.socket) -> socket.socket:
            return tls.wrap_socket(sock, server_hostname=ep.host)
    api = librouteros.connect(ep.host, ep.username, ep.password, port=ep.port,
                              timeout=ep.timeout_s, ssl_wrapper=wrapper, encoding=ENCODING)
    return Session(api)


@contextlib.contextmanager
def errors(ep: Endpoint, doing: str, *, connecting: bool = False) -> Iterator[None]:
    """Map socket, TLS and librouteros failures to the driver error tree, once, here."""
    where = ep.describe()
    try:
        yield
    except (TrapError, MultiTrapError) as exc:
        message = str(exc)
        if connecting:
            raise NeedsHumanError(
                f"The router at {ep.host} refused the login of {ep.username!r} ({message}); "
                "check router.username and the password, and that the user's group has the "
                "api policy."
            ) from exc
        raise DeviceReplyError(f"The router refused to {doing}: {message}.", raw=message,
                               remedy=TRAP_REMEDY) from exc
    except FatalError as exc:
        raise RetryableError(
            f"The router at {where} ended the API session while we tried to {doing} "
            f"(!fatal {exc}); the agent reconnects.", remedy=UNREACHABLE_REMEDY) from exc
    except ConnectionClosed as exc:
        raise RetryableError(
            f"The router at {where} closed the connection while we tried to {doing}; the "
            "agent reconnects.", remedy=UNREACHABLE_REMEDY) from exc
    except ssl.SSLCertVerificationError as exc:
        raise NeedsHumanError(
            f"The certificate of the router's api-ssl at {ep.host} did not verify "
            f"({exc.verify_message}); set router.tls_ca_file to the CA that signed it "
            "(its subjectAltName must match router.host)."
        ) from exc
    except ssl.SSLError as exc:
        raise NeedsHumanError(
            f"The TLS handshake with {where} failed ({exc.reason or exc}); give the api-ssl "
            "service a certificate (/ip service set api-ssl certificate=...) or check the port."
        ) from exc
    except UnicodeEncodeError as exc:
        raise NeedsHumanError(
            "The router user name or password holds characters the RouterOS API cannot "
            "carry; use ASCII for router.username and the password."
        ) from exc
    except socket.gaierror as exc:
        raise RetryableError(
            f"Cannot resolve the router's name {ep.host} ({exc}); set router.host to its "
            "address, or fix DNS.", remedy=UNREACHABLE_REMEDY) from exc
    except ConnectionRefusedError as exc:
        raise RetryableError(
            f"The router at {where} refused the connection; is the service enabled on that "
            "port (/ip service)?", remedy=UNREACHABLE_REMEDY) from exc
    except TimeoutError as exc:  # socket.timeout is TimeoutError
        hint = ""
        if connecting and ep.tls is not None:
            hint = " (a plain API port never answers a TLS handshake: is router.port api-ssl's?)"
        raise RetryableError(
            f"The router at {where} did not answer within {ep.timeout_s:g} s while we tried "
            f"to {doing}{hint}; the agent retries.", remedy=UNREACHABLE_REMEDY) from exc
    except (OSError, LibRouterosError, ValueError) as exc:
        raise RetryableError(
            f"Lost the router at {where} while we tried to {doing} ({exc}); the agent "
            "reconnects.", remedy=UNREACHABLE_REMEDY) from exc


# --- a channel: one session, one command in flight, reconnects ----------------------------


class Channel:
    """A lazily connected API session with one command in flight and reconnect back-off.

    `generation` grows with every successful login, so a caller can tell that the session
    it knew is gone (a router reboot always drops the connection).
    """

    def __init__(self, ep: Endpoint, name: str, *, backoff_min_s: float = BACKOFF_MIN_S,
                 backoff_max_s: float = BACKOFF_MAX_S) -> None:
        self.ep = ep
        self.name = name
        self.backoff_min_s = backoff_min_s
        self.backoff_max_s = backoff_max_s
        self.generation = 0
        #: Commands sent (each is one API round trip), for the benchmark and tests.
        self.round_trips = 0
        self._session: Session | None = None
        self._lock = asyncio.Lock()
        self._executor: ThreadPoolExecutor | None = None
        self._failures = 0
        self._retry_at = 0.0
        self._last_error: DriverError | None = None

    @property
    def connected(self) -> bool:
        return self._session is not None and not self._session.closed

    def _pool(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"routeros-{self.name}")
        return self._executor

    async def _in_worker(self, fn: Callable[..., T], *args: Any, deadline_s: float,
                         session: Session | None) -> T:
        """`fn` on the worker thread, under a deadline (TimeoutError).

        Waits with asyncio.wait, never asyncio.wait_for: on Python 3.11 a cancellation
        that lands after the worker's result is in but before this task resumes makes
        wait_for return the result and drop the cancellation, and the agent's loops that
        poll the router then never end.
        """
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._pool(), fn, *args)
        # An abandoned worker's error (the command that an abort ended) is nobody's to log.
        future.add_done_callback(_consume)
        try:
            done, _ = await asyncio.wait({future}, timeout=deadline_s)
            if not done:
                raise TimeoutError
            return future.result()
        except BaseException:
            # Timed out, failed or cancelled mid-command: the session's stream can no
            # longer be trusted. Shutting the socket down unblocks the worker at once.
            if session is not None:
                session.abort()
            else:  # a login: one that succeeds now (or later) is nobody's session
                future.add_done_callback(_close_abandoned_login)
            # Give the worker a moment to notice the abort; a cancellation meanwhile goes
            # through (asyncio.wait never swallows one), never turned into the timeout.
            await asyncio.wait({future}, timeout=2.0)
            raise

    async def _connect(self) -> Session:
        now = time.monotonic()
        if now < self._retry_at:
            if isinstance(self._last_error, NeedsHumanError):  # still true: say it again
                raise NeedsHumanError(str(self._last_error), remedy=self._last_error.remedy)
            raise RetryableError(
                f"The router at {self.ep.describe()} could not be reached moments ago; the "
                f"agent tries again in {self._retry_at - now:.1f} s.", remedy=UNREACHABLE_REMEDY)
        try:
            with errors(self.ep, "log in", connecting=True):
                session = await self._in_worker(login, self.ep,
                                                deadline_s=self.ep.timeout_s * 3, session=None)
        except (DriverError, TimeoutError) as exc:
            self._last_error = exc if isinstance(exc, DriverError) else None
            self._failures += 1
            delay = min(self.backoff_max_s, self.backoff_min_s * 2 ** (self._failures - 1))
            self._retry_at = time.monotonic() + delay
            if isinstance(exc, TimeoutError):
                raise RetryableError(
                    f"The router at {self.ep.describe()} did not complete the login within "
                    f"{self.ep.timeout_s * 3:g} s; the agent retries.",
                    remedy=UNREACHABLE_REMEDY) from exc
            raise
        self._failures = 0
        self._retry_at = 0.0
        self.generation += 1
        self._session = session
        return session

    async def ensure(self) -> None:
        """Connect now if the session is gone or stale (a caller that must know whether the
        router is still the one it knew checks `generation` after this)."""
        async with self._lock:
            if self._session is None or self._session.stale():
                self._drop()
                await self._connect()

    async def call(self, command: str, args: Mapping[str, str] | None = None, *,
                   queries: Sequence[str] = (), proplist: Sequence[str] | None = None,
                   deadline_s: float | None = None) -> parse.Reply:
        """Run one command; its reply with string values. Raises ApiTrap on `!trap`."""
        words = words_for(args, queries, proplist)
        deadline = deadline_s if deadline_s is not None else self.ep.timeout_s * 2
        async with self._lock:
            session = self._session
            if session is None or session.stale():
                self._drop()
                session = await self._connect()
            self.round_trips += 1
            try:
                with errors(self.ep, f"run {command}"):
                    try:
                        reply = await self._in_worker(session.run, command, words,
                                                      deadline_s=deadline, session=session)
                    except TimeoutError as exc:  # the deadline (or the socket's timeout)
                        raise RetryableError(
                            f"The router at {self.ep.describe()} did not answer {command} "
                            f"within {deadline:g} s; the agent retries.",
                            remedy=UNREACHABLE_REMEDY) from exc
            except BaseException:
                self._drop()
                raise
        if reply.traps:
            raise ApiTrap(command, reply.traps)
        if reply.unknown:
            log.warning("router %s: unexpected reply words to %s: %s", self.ep.host, command,
                        reply.unknown)
        return reply

    def _drop(self) -> None:
        if self._session is not None:
            self._session.abort()
            self._session = None

    async def close(self) -> None:
        async with self._lock:
            self._drop()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
