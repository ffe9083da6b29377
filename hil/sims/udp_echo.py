"""The provider's UDP echo responder (RFC 862), in-process for tests and as a lab daemon.

RFC 862 ("Echo Protocol", J. Postel, 1983), UDP based echo service: "A server listens
for UDP datagrams on UDP port 7. When a datagram is received, the data from it is sent
back in an answering datagram." So, faithfully:

- the answer carries exactly the data received: every byte, nothing added, nothing
  trimmed, whatever it is (an empty datagram is answered with an empty one);
- it goes to the address and port the datagram came from, from the address and port
  it was sent to (bind a specific address on a multi-homed host: the lab binds each SBC
  address, so a connected client behind NAT sees the answer come from where it sent);
- one answer per datagram; there is no session and no state.

The IP TOS of the answer is not copied (RFC 862 says nothing of it; inetd's echo does
not copy it either). The installer's test measures with it (`agent.installer.echo`).

Test knobs, off by default and never set in the lab: `drop_every` (drop every Nth
datagram received, counting from 1), `delay_s` (answer this late), `duplicate` (answer
twice), `rate_kbps` (answer no faster than a link of this rate would carry the answers:
each leaves one serialisation time, IP bytes x 8 / rate, after the one before, so a
packet train comes back spread as by a bottleneck).

    python -m hil.sims.udp_echo --bind 203.0.113.10 --port 7 [--drop-every N] [--delay-s S]

prints one line when it listens ("udp-echo listening on 203.0.113.10:7") and exits 0 on
SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import socket
import sys
from types import TracebackType

ECHO_PORT = 7
#: The largest UDP datagram (IPv4): anything the kernel hands us is answered whole.
MAX_DATAGRAM_BYTES = 65535
#: Reads per readiness callback, so a flood cannot hold the event loop.
MAX_READS_PER_WAKEUP = 256


class UdpEchoResponder:
    """An RFC 862 echo responder on asyncio; `start()` binds, `stop()` closes.

        async with UdpEchoResponder("127.0.0.1", 0, drop_every=5) as echo:
            host, port = echo.address

    The knobs are plain attributes and may change while it runs. `received`,
    `answered` and `dropped` count datagrams.
    """

    def __init__(
        self,
        bind: str = "127.0.0.1",
        port: int = 0,
        *,
        drop_every: int = 0,
        delay_s: float = 0.0,
        duplicate: bool = False,
        rate_kbps: float = 0.0,
    ) -> None:
        self.bind = bind
        self.port = port
        self.drop_every = drop_every
        self.delay_s = delay_s
        self.duplicate = duplicate
        self.rate_kbps = rate_kbps
        self.received = 0
        self.answered = 0
        self.dropped = 0
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._address: tuple[str, int] | None = None
        self._pending: set[asyncio.TimerHandle] = set()
        #: When the simulated bottleneck is free again (event loop time).
        self._free_at = 0.0

    @property
    def address(self) -> tuple[str, int]:
        """Where it listens (the real port when started with port 0)."""
        if self._address is None:
            raise RuntimeError("the echo responder is not started")
        return self._address

    async def start(self) -> tuple[str, int]:
        """Bind and listen; raises OSError (address in use, not an address of this host).

        A plain non-blocking socket on the event loop rather than an asyncio datagram
        transport: Python 3.11's transport silently drops an empty datagram on send,
        and RFC 862 answers those too.
        """
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            sock.bind((self.bind, self.port))
            loop.add_reader(sock.fileno(), self._on_readable)
        except BaseException:
            sock.close()
            raise
        self._sock, self._loop = sock, loop
        host, port = sock.getsockname()[:2]
        self._address = (host, port)
        return self._address

    async def stop(self) -> None:
        for handle in self._pending:
            handle.cancel()
        self._pending.clear()
        if self._sock is not None:
            if self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(self._sock.fileno())
            self._sock.close()
        self._sock = self._loop = None

    async def __aenter__(self) -> UdpEchoResponder:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def _on_readable(self) -> None:
        for _ in range(MAX_READS_PER_WAKEUP):
            if self._sock is None:
                return
            try:
                data, addr = self._sock.recvfrom(MAX_DATAGRAM_BYTES)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # an error queued about an earlier answer: nothing to do
                continue
            self._on_datagram(data, addr[:2])

    def _on_datagram(self, data: bytes, addr: tuple[str, int]) -> None:
        self.received += 1
        if self.drop_every > 0 and self.received % self.drop_every == 0:
            self.dropped += 1
            return
        loop = asyncio.get_running_loop()
        depart = loop.time() + max(0.0, self.delay_s)
        if self.rate_kbps > 0:
            depart = max(depart, self._free_at) + (len(data) + 28) * 8 / (self.rate_kbps * 1000)
            self._free_at = depart
        if depart <= loop.time():
            self._answer(data, addr)
            return
        handle: asyncio.TimerHandle | None = None

        def later() -> None:
            if handle is not None:
                self._pending.discard(handle)
            self._answer(data, addr)

        handle = loop.call_at(depart, later)
        self._pending.add(handle)

    def _answer(self, data: bytes, addr: tuple[str, int]) -> None:
        if self._sock is None:
            return
        for _ in range(2 if self.duplicate else 1):
            # A full send buffer or a vanished route drops the answer, as UDP does.
            with contextlib.suppress(OSError):
                self._sock.sendto(data, addr)
        self.answered += 1


async def _serve(args: argparse.Namespace) -> int:
    responder = UdpEchoResponder(
        args.bind, args.port, drop_every=args.drop_every, delay_s=args.delay_s
    )
    try:
        host, port = await responder.start()
    except OSError as exc:
        print(
            f"udp-echo: cannot listen on {args.bind}:{args.port}: {exc.strerror or exc}",
            file=sys.stderr,
        )
        return 1
    stopped = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopped.set)
    print(f"udp-echo listening on {host}:{port}", flush=True)
    await stopped.wait()
    await responder.stop()
    print(
        f"udp-echo stopped: {responder.received} received, {responder.answered} answered, "
        f"{responder.dropped} dropped",
        flush=True,
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m hil.sims.udp_echo",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--bind", default="127.0.0.1", help="address to listen on")
    parser.add_argument(
        "--port",
        type=int,
        default=ECHO_PORT,
        help=f"UDP port (default {ECHO_PORT}; 0 picks a free one)",
    )
    parser.add_argument(
        "--drop-every", type=int, default=0, metavar="N", help="test knob: drop every Nth datagram"
    )
    parser.add_argument(
        "--delay-s", type=float, default=0.0, metavar="S", help="test knob: answer S seconds late"
    )
    args = parser.parse_args(argv)
    return asyncio.run(_serve(args))


if __name__ == "__main__":
    sys.exit(main())
