"""A real mosquitto broker on 127.0.0.1: its own config, port, files and process.

A lab part, not a test: the tests use it (through the `mosquitto` fixture in
`tests/helpers/mosquitto.py`), and so do the benchmarks (`hil.bench.mqtt_bytes`).
`Mosquitto(workdir, ...)`: `tls=True` adds a TLS listener (`tls_port`) with a throwaway
CA, a server certificate for 127.0.0.1/localhost and a client certificate
(`tls_files`); `persistence=True` keeps retained messages across `stop()`/`start()`
(mosquitto 2.0.11 does not bring MQTT 5 sessions back after a restart, so do not count
on queued messages for a subscriber surviving one). The packaged mosquitto service is
never touched. Everything it starts or writes is gone after `close()`.

`TcpRelay` stands between a client and the broker, to cut or hold one client's path
while others stay connected (the site's link is down, the broker is not); it counts
the bytes it carries each way (TCP payload: TLS records and all), and with
`mqtt5=False` it plays a broker that knows only MQTT 3.1.1 (it answers an MQTT 5
CONNECT with "unacceptable protocol version", as the 3.1.1 spec says, and closes).

For access control: `Mosquitto(..., tls=True, acl=ACL_TEXT, plain=False)` takes the
client's identity from its certificate (`use_identity_as_username`) and forces the
client id to be that name (`use_username_as_clientid`), so `%c` and `%u` in the ACL's
pattern lines cannot be spoofed; `issue_client_cert(broker.tls_files, "site-a")`
makes one certificate per identity.
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
from dataclasses import dataclass
from pathlib import Path

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
    directory: Path
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
        directory=directory,
        ca_file=directory / "ca.crt",
        server_cert=directory / "server.crt",
        server_key=directory / "server.key",
        client_cert=directory / "client.crt",
        client_key=directory / "client.key",
    )


def issue_client_cert(tls: TlsFiles, cn: str) -> tuple[Path, Path]:
    """A client certificate and key for identity `cn`, signed by the test CA."""
    directory = tls.directory

    def openssl(*args: str) -> None:
        subprocess.run([OPENSSL, *args], check=True, capture_output=True, cwd=directory)

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    openssl("req", "-new", *ec, "-keyout", f"{cn}.key", "-out", f"{cn}.csr", "-subj", f"/CN={cn}")
    openssl("x509", "-req", "-in", f"{cn}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", f"{cn}.crt", "-days", "2",
            "-extfile", "client.ext")  # fmt: skip
    return directory / f"{cn}.crt", directory / f"{cn}.key"


#: The ACL the project recommends (docs/mqtt.md): each device only under its own id,
#: and only in the direction the contract says; the fleet's identities by name.
DEVICE_ACL = """\
# devices: identity = certificate CN = client id (use_username_as_clientid)
pattern write cpe/v1/%c/state
pattern write cpe/v1/%c/evt
pattern write cpe/v1/%c/tele
pattern write cpe/v1/%c/cfg/rep
pattern write cpe/v1/%c/cmd/res
pattern read cpe/v1/%c/cfg/des
pattern read cpe/v1/%c/cmd/req

user fleet-notifier
topic read cpe/v1/+/evt
topic read cpe/v1/+/tele
topic read cpe/v1/+/state

user fleet-console
topic read cpe/v1/#
topic write cpe/v1/+/cmd/req
topic write cpe/v1/+/cfg/des
topic readwrite fleet/v1/sync/#
"""


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
        acl: str | None = None,
        plain: bool = True,
        anonymous: bool = True,
    ) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.persistence = persistence
        self.acl = acl
        self.plain = plain
        self.anonymous = anonymous
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
            f"allow_anonymous {'true' if self.anonymous else 'false'}",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
            f"persistence {'true' if self.persistence else 'false'}",
        ]
        if self.acl is not None:
            acl_path = self.workdir / "acl"
            acl_path.write_text(self.acl)
            lines += [f"acl_file {acl_path}"]
        if self.persistence:
            lines += [f"persistence_location {self.workdir}/", "autosave_interval 0"]
        if self.plain:
            lines += [f"listener {self.port} {self.host}"]
        if self.tls_files is not None:
            lines += [
                f"listener {self.tls_port} {self.host}",
                f"cafile {self.tls_files.ca_file}",
                f"certfile {self.tls_files.server_cert}",
                f"keyfile {self.tls_files.server_key}",
                f"require_certificate {'true' if self.require_client_cert else 'false'}",
            ]
            if self.acl is not None:
                lines += ["use_identity_as_username true", "use_username_as_clientid true"]
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
        ports = [p for p in (self.port if self.plain else None, self.tls_port) if p is not None]
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


class TcpRelay:
    """127.0.0.1:<port> -> target, in the test's asyncio loop.

    `hold()` stops listening (new connections are refused, as by a host that is down)
    and `cut()` also drops the connections it carries; `release()` listens again.
    """

    def __init__(self, target_host: str, target_port: int, *, mqtt5: bool = True) -> None:
        self.target = (target_host, target_port)
        self.host = "127.0.0.1"
        self.port = free_port()
        self.mqtt5 = mqtt5
        #: TCP payload carried, client -> broker and broker -> client; connections made.
        self.bytes_up = 0
        self.bytes_down = 0
        self.connections = 0
        #: MQTT protocol levels seen in CONNECT packets (plain MQTT only).
        self.protocol_levels: list[int] = []
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
        self.connections += 1
        first = b""
        if not self.mqtt5:
            # CONNECT: fixed header, remaining length, "\x00\x04MQTT", protocol level.
            with contextlib.suppress(OSError, asyncio.IncompleteReadError):
                first = await reader.readexactly(2)
                while first[-1] & 0x80:
                    first += await reader.readexactly(1)
                first += await reader.readexactly(7)
            level = first[-1] if len(first) >= 9 else 0
            self.protocol_levels.append(level)
            if level == 5:
                writer.write(bytes([0x20, 0x02, 0x00, 0x01]))  # 3.1.1: unacceptable version
                with contextlib.suppress(OSError):
                    await writer.drain()
                writer.close()
                return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, up_writer}
        if first:
            up_writer.write(first)
            self.bytes_up += len(first)
        pipes = [
            asyncio.create_task(self._pipe(reader, up_writer, "up")),
            asyncio.create_task(self._pipe(up_reader, writer, "down")),
        ]
        self._tasks.update(pipes)
        await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
        for end in (writer, up_writer):
            end.close()
            self._writers.discard(end)
        for pipe in pipes:
            pipe.cancel()
            self._tasks.discard(pipe)

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, direction: str
    ) -> None:
        with contextlib.suppress(OSError, asyncio.CancelledError):
            while data := await reader.read(65536):
                if direction == "up":
                    self.bytes_up += len(data)
                else:
                    self.bytes_down += len(data)
                writer.write(data)
                await writer.drain()
