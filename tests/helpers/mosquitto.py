"""A real mosquitto broker on 127.0.0.1 for tests: its own config, port, files and process.

Use the `mosquitto` fixture (plain listener), or `Mosquitto(workdir, ...)` directly for
options: `tls=True` adds a TLS listener (`tls_port`) with a throwaway CA, a server
certificate for 127.0.0.1/localhost and a client certificate (`tls_files`);
`persistence=True` keeps retained messages across `stop()`/`start()` (mosquitto
2.0.11 does not bring MQTT 5 sessions back after a restart, so do not count on queued
messages for a subscriber surviving one). The packaged mosquitto service is
never touched. Everything it starts or writes is gone after `close()`.

`TcpRelay` stands between a client and the broker, to cut or hold one client's path
while others stay connected (the site's link is down, the broker is not).

To use the fixture from another test module: `from tests.helpers.mosquitto import
mosquitto` and take `mosquitto` as an argument (ruff knows the pattern), or import
`Mosquitto` and build your own fixture.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
OPENSSL = shutil.which("openssl") or "/usr/bin/openssl"
START_TIMEOUT_S = 5.0
STOP_TIMEOUT_S = 5.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class TlsFiles:
    ca_file: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def make_tls_files(directory: Path, client_cn: str = "test-device") -> TlsFiles:
    """A throwaway CA, a server certificate (127.0.0.1, localhost) and a client one."""
    directory.mkdir(parents=True, exist_ok=True)

    def openssl(*args: str) -> None:
        subprocess.run([OPENSSL, *args], check=True, capture_output=True, cwd=directory)

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
            "-subj", "/CN=cpe-agent test CA")  # fmt: skip
    for name, cn, ext in (
        ("server", "localhost", "subjectAltName=IP:127.0.0.1,DNS:localhost"),
        ("client", client_cn, "extendedKeyUsage=clientAuth"),
    ):
        openssl("req", "-new", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr",
                "-subj", f"/CN={cn}")  # fmt: skip
        (directory / f"{name}.ext").write_text(ext + "\n")
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                "-CAcreateserial", "-out", f"{name}.crt", "-days", "2",
                "-extfile", f"{name}.ext")  # fmt: skip
    return TlsFiles(
        ca_file=directory / "ca.crt",
        server_cert=directory / "server.crt",
        server_key=directory / "server.key",
        client_cert=directory / "client.crt",
        client_key=directory / "client.key",
    )


class Mosquitto:
    """One broker process; `start()`/`stop()` may be repeated (same ports, same files)."""

    host = "127.0.0.1"

    def __init__(
        self,
        workdir: Path,
        *,
        tls: bool = False,
        require_client_cert: bool = True,
        persistence: bool = False,
    ) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.persistence = persistence
        self.port = free_port()
        self.tls_files = make_tls_files(workdir / "tls") if tls else None
        self.tls_port = free_port() if tls else None
        self.require_client_cert = require_client_cert
        self.config_path = workdir / "mosquitto.conf"
        self.log_path = workdir / "mosquitto.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._frozen = False

    def config(self) -> str:
        lines = [
            f"user {getpass.getuser()}",
            "per_listener_settings false",
            "allow_anonymous true",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
            f"persistence {'true' if self.persistence else 'false'}",
        ]
        if self.persistence:
            lines += [f"persistence_location {self.workdir}/", "autosave_interval 0"]
        lines += [f"listener {self.port} {self.host}"]
        if self.tls_files is not None:
            lines += [
                f"listener {self.tls_port} {self.host}",
                f"cafile {self.tls_files.ca_file}",
                f"certfile {self.tls_files.server_cert}",
                f"keyfile {self.tls_files.server_key}",
                f"require_certificate {'true' if self.require_client_cert else 'false'}",
            ]
        return "\n".join(lines) + "\n"

    def start(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            return
        self.config_path.write_text(self.config())
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [MOSQUITTO, "-c", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        ports = [p for p in (self.port, self.tls_port) if p is not None]
        deadline = time.monotonic() + START_TIMEOUT_S
        while not all(self._accepting(p) for p in ports):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"mosquitto did not start:\n{self.log_text()}")
            time.sleep(0.01)

    @staticmethod
    def _accepting(port: int) -> bool:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return True
        return False

    def stop(self) -> None:
        """SIGTERM: mosquitto closes its clients and (with persistence) saves its state."""
        if self.proc is None:
            return
        self.thaw()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(STOP_TIMEOUT_S)
        self.proc = None

    def kill(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(STOP_TIMEOUT_S)
        self.proc = None
        self._frozen = False

    def freeze(self) -> None:
        """SIGSTOP: the kernel still takes bytes, nothing answers (a broker that hangs)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)
        self._frozen = True

    def thaw(self) -> None:
        if self.proc is not None and self._frozen:
            self.proc.send_signal(signal.SIGCONT)
        self._frozen = False

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def close(self) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self.workdir, ignore_errors=True)


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    """A running broker with a plain listener on 127.0.0.1:<free port>."""
    broker = Mosquitto(tmp_path / "mosquitto")
    try:
        broker.start()
        yield broker
    finally:
        broker.close()


class TcpRelay:
    """127.0.0.1:<port> -> target, in the test's asyncio loop.

    `hold()` stops listening (new connections are refused, as by a host that is down)
    and `cut()` also drops the connections it carries; `release()` listens again.
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.host = "127.0.0.1"
        self.port = free_port()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def release(self) -> None:
        if self._server is None:
            self._server = await asyncio.start_server(
                self._accept, self.host, self.port, reuse_address=True
            )

    async def hold(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def cut(self) -> None:
        await self.hold()
        for writer in list(self._writers):
            writer.close()

    async def close(self) -> None:
        await self.cut()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, up_writer}
        pipes = [
            asyncio.create_task(self._pipe(reader, up_writer)),
            asyncio.create_task(self._pipe(up_reader, writer)),
        ]
        self._tasks.update(pipes)
        await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
        for end in (writer, up_writer):
            end.close()
            self._writers.discard(end)
        for pipe in pipes:
            pipe.cancel()
            self._tasks.discard(pipe)

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.CancelledError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
