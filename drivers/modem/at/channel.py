"""AtChannel: one AT command at a time over a serial port, with unsolicited codes routed aside.

The only module in the project that imports pyserial. `serial_for_url` opens a device
path, a pty or `socket://host:port` alike. A reader thread splits the byte stream into
lines and hands each to the event loop (`call_soon_threadsafe`); writes go through
`asyncio.to_thread`. What the channel copes with, and why:

- Echo: it sends ATE0 at open, but a modem that has just restarted echoes again (V.250
  default E1), so a line equal to the command in flight is dropped as its echo.
- Unsolicited result codes (URCs) may land before, inside or after a reply. A line with a
  known URC prefix goes to subscribers unless the command in flight claims it (its own
  reply prefix, e.g. "+CEREG:" for AT+CEREG?, narrowed by an `accept` test).
- Final results: OK, ERROR, +CME ERROR (number or text), +CMS ERROR. Errors raise AtError
  (a DeviceReplyError) carrying everything seen, so a bug report loses nothing.
- Timeouts per command. After one, a late reply could be taken for the next command's, so
  the channel resyncs first (AT+CMEE? must come back with its own "+CMEE:" line; finals
  before it are the late ones). `hang_after` timeouts in a row mark the modem hung.
- A port that vanishes (USB modem re-enumerating after a reset) fails the command in
  flight; the next command reopens it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import serial

from drivers import aio
from drivers.errors import NeedsHumanError, RetryableError
from drivers.modem.at.protocol import AtResponse, classify_final, error_for, reply_prefix

log = logging.getLogger(__name__)

#: Unsolicited codes every 27.007 modem may send (27.007 / 27.005); vendor plugins add theirs.
DEFAULT_URC_PREFIXES: tuple[str, ...] = (
    "RING",
    "+CRING:",
    "+CLIP:",
    "+CREG:",
    "+CGREG:",
    "+CEREG:",
    "+C5GREG:",
    "+CPIN:",
    "+CMTI:",
    "+CMT:",
    "+CDS:",
    "+CDSI:",
    "+CBM:",
    "+CUSD:",
    "+CGEV:",
    "+CTZV:",
    "+CTZE:",
    "+CTZEU:",
    "+CIEV:",
    "NO CARRIER",
)

RESYNC_COMMAND = "AT+CMEE?"


class AtTimeout(RetryableError):
    """The modem did not finish a reply in time."""


class ModemHung(AtTimeout):
    """Several commands in a row went unanswered: the modem (or its AT port) is hung."""

    remedy = "The agent resets the modem by itself; if it keeps hanging, power-cycle it."


@dataclass
class _InFlight:
    text: str
    prefix: str | None
    accept: Callable[[str], bool] | None
    future: asyncio.Future[tuple[str, ...]]
    resync: bool = False
    echo_seen: bool = False
    got_prefix_line: bool = False
    lines: list[str] = field(default_factory=list)
    raw: list[str] = field(default_factory=list)

    def claims(self, line: str) -> bool:
        if self.prefix and line.upper().startswith(self.prefix):
            return self.accept(line) if self.accept is not None else True
        return False


class AtChannel:
    """An AT command port. Use `await open()`, then `command()`; `subscribe()` for URCs."""

    def __init__(
        self,
        url: str,
        *,
        baudrate: int = 115200,
        timeout_s: float = 5.0,
        hang_after: int = 3,
        urc_prefixes: Iterable[str] = DEFAULT_URC_PREFIXES,
    ) -> None:
        self.url = url
        self.baudrate = baudrate
        self.timeout_s = timeout_s
        self.hang_after = hang_after
        self._urc_prefixes = tuple(p.upper() for p in urc_prefixes)
        self._serial: serial.SerialBase | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = asyncio.Lock()
        self._inflight: _InFlight | None = None
        self._subscribers: dict[str, list[Callable[[str], None]]] = {}
        self._stale = False
        self._lost: BaseException | None = None
        self.consecutive_timeouts = 0
        #: Unsolicited or stray lines nobody subscribed to (the last 200), for bug reports.
        self.stray: collections.deque[str] = collections.deque(maxlen=200)

    # -- life cycle ----------------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        return self._serial is not None and self._lost is None

    @property
    def hung(self) -> bool:
        return self.consecutive_timeouts >= self.hang_after

    async def open(self) -> None:
        """Open the port and turn echo off (ATE0); NeedsHumanError when the port is unusable."""
        self._loop = asyncio.get_running_loop()
        await self._open_port(first=True)
        await self.command("ATE0")

    async def _open_port(self, *, first: bool) -> None:
        await self._close_port()
        try:
            ser = await asyncio.to_thread(
                serial.serial_for_url,
                self.url,
                baudrate=self.baudrate,
                timeout=0.1,
                write_timeout=2.0,
                exclusive=True,
            )
        except (serial.SerialException, OSError, ValueError) as exc:
            text = str(exc)
            if not first:
                raise RetryableError(
                    f"The modem port {self.url} is not back yet ({text})."
                ) from exc
            if "lock" in text.lower():
                raise NeedsHumanError(
                    f"Another program holds the modem port {self.url} ({text}).",
                    remedy="Stop ModemManager (or tell it to ignore the port) and restart.",
                ) from exc
            raise NeedsHumanError(
                f"The modem port {self.url} cannot be opened ({text}).",
                remedy="Check the cable, the port name in the config and its permissions.",
            ) from exc
        self._serial = ser
        self._lost = None
        self._stale = False
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._reader, args=(ser, self._stop), name=f"at-reader {self.url}", daemon=True
        )
        self._thread.start()

    async def close(self) -> None:
        await self._close_port()
        if self._inflight is not None and not self._inflight.future.done():
            self._inflight.future.set_exception(RetryableError("The modem port was closed."))

    async def _close_port(self) -> None:
        ser, thread = self._serial, self._thread
        self._serial, self._thread = None, None
        self._stop.set()
        if ser is not None:
            with contextlib.suppress(Exception):
                cancel = getattr(ser, "cancel_read", None)
                if cancel is not None:
                    cancel()
        if thread is not None:
            await asyncio.to_thread(thread.join, 2.0)
        if ser is not None:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(ser.close)

    # -- unsolicited codes ---------------------------------------------------------------

    def add_urc_prefixes(self, *prefixes: str) -> None:
        known = set(self._urc_prefixes)
        self._urc_prefixes += tuple(p.upper() for p in prefixes if p.upper() not in known)

    def subscribe(self, prefix: str, callback: Callable[[str], None]) -> Callable[[], None]:
        """Call `callback(line)` for each unsolicited line starting with `prefix` ("" = all).
        Returns the unsubscribe function."""
        key = prefix.upper()
        self._subscribers.setdefault(key, []).append(callback)
        if key:
            self.add_urc_prefixes(key)

        def unsubscribe() -> None:
            with contextlib.suppress(ValueError, KeyError):
                self._subscribers[key].remove(callback)

        return unsubscribe

    async def wait_for(self, prefix: str, timeout_s: float) -> str:
        """The next unsolicited line starting with `prefix`; AtTimeout when none comes."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[str] = loop.create_future()

        def got(line: str) -> None:
            if not fut.done():
                fut.set_result(line)

        unsubscribe = self.subscribe(prefix, got)
        try:
            return await aio.wait_for(fut, timeout_s)
        except TimeoutError as exc:
            raise AtTimeout(f"The modem did not say {prefix} within {timeout_s:g} s.") from exc
        finally:
            unsubscribe()

    # -- commands ------------------------------------------------------------------------

    async def command(
        self,
        cmd: str,
        *,
        timeout_s: float | None = None,
        prefix: str | None = None,
        accept: Callable[[str], bool] | None = None,
    ) -> AtResponse:
        """Send one command and return its reply; see the module docstring for the rules."""
        async with self._lock:
            if self._serial is None or self._lost is not None:
                await self._open_port(first=False)
            timeout = self.timeout_s if timeout_s is None else timeout_s
            if self._stale:
                await self._exchange(RESYNC_COMMAND, "+CMEE:", None, timeout, resync=True)
                self._stale = False
            pfx = reply_prefix(cmd) if prefix is None else (prefix.upper() or None)
            return await self._exchange(cmd, pfx, accept, timeout, resync=False)

    async def _exchange(
        self,
        cmd: str,
        prefix: str | None,
        accept: Callable[[str], bool] | None,
        timeout_s: float,
        *,
        resync: bool,
    ) -> AtResponse:
        loop = asyncio.get_running_loop()
        inflight = _InFlight(cmd.strip(), prefix, accept, loop.create_future(), resync=resync)
        self._inflight = inflight
        try:
            ser = self._serial
            if ser is None:
                raise RetryableError(f"The modem port {self.url} is closed.")
            try:
                await asyncio.to_thread(ser.write, (cmd.strip() + "\r").encode("ascii"))
            except (serial.SerialException, OSError) as exc:
                self._lost = exc
                raise RetryableError(
                    f"Writing to the modem port {self.url} failed ({exc})."
                ) from exc
            try:
                # Not asyncio.wait_for: on 3.11 a cancel that came with the final result
                # was lost, and the modem watch that was polling polled on (drivers.aio).
                final = await aio.wait_for(inflight.future, timeout_s)
            except TimeoutError as exc:
                self.consecutive_timeouts += 1
                self._stale = True
                if self.hung:
                    raise ModemHung(
                        f"The modem has not answered {self.consecutive_timeouts} commands in a "
                        f"row (last {cmd.strip()}); it looks hung."
                    ) from exc
                raise AtTimeout(
                    f"The modem did not answer {cmd.strip()} within {timeout_s:g} s."
                ) from exc
        finally:
            self._inflight = None
        self.consecutive_timeouts = 0
        raw = "\n".join(inflight.raw)
        kind, _, _ = classify_final(final[0], cmd) or ("error", None, None)
        if kind != "ok":
            raise error_for(cmd.strip(), final[0], raw)
        return AtResponse(cmd.strip(), tuple(inflight.lines), final[0], raw)

    # -- the reader thread and its lines (run in the loop) -------------------------------

    def _reader(self, ser: serial.SerialBase, stop: threading.Event) -> None:
        buf = bytearray()
        loop = self._loop
        assert loop is not None
        while not stop.is_set():
            try:
                data = ser.read(ser.in_waiting or 1)
            except (serial.SerialException, OSError, TypeError, AttributeError) as exc:
                if not stop.is_set():
                    with contextlib.suppress(RuntimeError):  # the loop may be closing
                        loop.call_soon_threadsafe(self._on_lost, exc)
                return
            if not data:
                continue
            buf += data
            while True:
                cut = min((i for i in (buf.find(b"\r"), buf.find(b"\n")) if i >= 0), default=-1)
                if cut < 0:
                    break
                chunk = bytes(buf[:cut])
                del buf[: cut + 1]
                if chunk.strip():
                    try:
                        loop.call_soon_threadsafe(self._on_line, _decode(chunk))
                    except RuntimeError:  # the loop is closed: nobody is listening
                        return

    def _on_lost(self, exc: BaseException) -> None:
        log.warning("modem port %s lost: %s", self.url, exc)
        self._lost = exc
        cmd = self._inflight
        if cmd is not None and not cmd.future.done():
            cmd.future.set_exception(
                RetryableError(f"The modem port {self.url} went away during {cmd.text} ({exc}).")
            )

    def _is_urc(self, line: str) -> bool:
        upper = line.upper()
        return any(upper.startswith(p) for p in self._urc_prefixes if p)

    def _on_line(self, line: str) -> None:
        s = line.strip()
        cmd = self._inflight
        if cmd is not None and not cmd.future.done():
            cmd.raw.append(line)
            if not cmd.echo_seen and s == cmd.text:
                cmd.echo_seen = True
                return
            if self._is_urc(s) and not cmd.claims(s) and classify_final(s, cmd.text) is None:
                self._dispatch(s)
                return
            final = classify_final(s, cmd.text)
            if final is not None:
                if cmd.resync and not cmd.got_prefix_line:
                    log.debug("dropping a late final result %r", s)
                    return
                cmd.future.set_result((s,))
                return
            if cmd.prefix and s.upper().startswith(cmd.prefix):
                cmd.got_prefix_line = True
            cmd.lines.append(s)
            return
        if s.upper().startswith("AT") or classify_final(s) is not None:
            self.stray.append(s)  # a late echo or result of a command that timed out
            return
        self._dispatch(s)

    def _dispatch(self, line: str) -> None:
        upper = line.upper()
        delivered = False
        for key, callbacks in list(self._subscribers.items()):
            if upper.startswith(key):
                for callback in list(callbacks):
                    delivered = True
                    try:
                        callback(line)
                    except Exception:
                        log.exception("URC subscriber failed on %r", line)
        if not delivered:
            self.stray.append(line)


def _decode(chunk: bytes) -> str:
    """Modems speak ASCII; UTF-8 operator names pass; anything else maps byte for byte."""
    try:
        return chunk.decode("utf-8")
    except UnicodeDecodeError:
        return chunk.decode("latin-1")
