"""`Lab`: build, impair, use and tear down the virtual lab (Linux network namespaces).

One class used by the CLI, the tests, the demo and the benchmarks alike:

    with Lab(prefix="cpt123-") as lab:          # up() on entry, down() on exit
        lab.impair("primary", "blackhole")
        assert not lab.ping("phone", "203.0.113.10")
        lab.impair("primary", "clear")

Everything runs through `ip`, `nft`, `sysctl` and `tc` (subprocess; pyroute2 belongs
to the agent's Linux driver). Nothing is created in the host's own namespace: veth
pairs are created directly inside the lab's namespaces, and every daemon runs in one.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hil.lab import plan, procs
from hil.lab import topology as t
from hil.lab.agent_config import render_agent_config
from hil.lab.status import lab_status
from hil.sims import sip_peer

REPO_ROOT = Path(__file__).resolve().parents[2]
MARKER = ".cpe-lab"
#: Where `up` notes a lab's directory so `down` finds it after a crash, whatever it was.
INDEX_DIR = Path("/run/cpe-lab-index")
REQUIRED_TOOLS = ("ip", "nft", "sysctl", "tc")
READY_TIMEOUT_S = 5.0


#: The simulated LTE modem's pty, as a link in the lab directory.
MODEM_LINK_NAME = "modem.tty"


class LabError(RuntimeError):
    """The lab cannot do what was asked; the message says what is wrong and what to do."""


class Lab:
    """The virtual lab for one prefix. Cheap to construct; `up()` builds it."""

    def __init__(self, prefix: str | None = None, lab_dir: Path | str | None = None) -> None:
        try:
            self.prefix = t.resolve_prefix(prefix)
        except ValueError as exc:
            raise LabError(str(exc)) from exc
        self._explicit_dir = lab_dir is not None
        self.lab_dir = Path(lab_dir) if lab_dir is not None else self._recorded_dir()
        self._children: dict[str, subprocess.Popen[bytes]] = {}
        self._netem: bool | None = None

    # --- names and paths ---------------------------------------------------------------

    def ns(self, node: str) -> str:
        """The full namespace name of a node ('cpe' -> 'cpl-cpe'); full names pass through."""
        if node.startswith(self.prefix) and node[len(self.prefix) :] in t.NODES:
            return node
        try:
            return t.namespace(self.prefix, node)
        except ValueError as exc:
            raise LabError(str(exc)) from exc

    @property
    def config_path(self) -> Path:
        """The agent's configuration written by `up()`."""
        return self.lab_dir / t.CONFIG_FILE_NAME

    @property
    def pid_dir(self) -> Path:
        return self.lab_dir / "pids"

    @property
    def log_dir(self) -> Path:
        return self.lab_dir / "logs"

    def _index_file(self) -> Path:
        return INDEX_DIR / self.prefix.rstrip("-")

    def _recorded_dir(self) -> Path:
        with contextlib.suppress(OSError):
            return Path(self._index_file().read_text().strip())
        return t.default_lab_dir(self.prefix)

    # --- context manager ----------------------------------------------------------------

    def __enter__(self) -> Lab:
        return self.up()

    def __exit__(self, *exc_info: object) -> None:
        self.down()

    # --- building ------------------------------------------------------------------------

    def up(self, *, mqtt: bool = False) -> Lab:
        """Build the lab from scratch (removing leftovers with this prefix first), start the
        SBC SIP peers, a UDP echo responder beside each, and the web server (and a
        mosquitto broker when `mqtt`), write the agent's config. Raises LabError, having
        cleaned up, when anything fails."""
        self._preflight(mqtt)
        self.down()
        try:
            self._prepare_dir()
            for step in plan.build_steps(self.prefix):
                self._run(step)
            self.config_path.write_text(render_agent_config(self.lab_dir))
            (self.lab_dir / "state").mkdir(exist_ok=True)
            self._start_daemons(mqtt)
            INDEX_DIR.mkdir(parents=True, exist_ok=True)
            self._index_file().write_text(f"{self.lab_dir}\n")
        except BaseException:
            self.down()
            raise
        return self

    def _preflight(self, mqtt: bool) -> None:
        if os.geteuid() != 0:
            raise LabError("the lab needs root (network namespaces); run it with sudo or as root")
        tools = [*REQUIRED_TOOLS, "sipp"] + (["mosquitto"] if mqtt else [])
        missing = [tool for tool in tools if shutil.which(tool) is None]
        if missing:
            raise LabError(
                f"missing tools: {', '.join(missing)}; run scripts/bootstrap.sh as root "
                "to install them"
            )

    def _prepare_dir(self) -> None:
        foreign = not (self.lab_dir / MARKER).exists()
        if foreign and self.lab_dir.exists() and any(self.lab_dir.iterdir()):
            raise LabError(
                f"{self.lab_dir} exists and is not a lab directory; choose another "
                "--config-dir (the lab removes its directory on down)"
            )
        for sub in ("", "pids", "logs", "www"):
            (self.lab_dir / sub).mkdir(parents=True, exist_ok=True)
        (self.lab_dir / MARKER).write_text(f"{self.prefix}\n")
        (self.lab_dir / "www" / "index.html").write_text(
            "<!doctype html><title>cpe-lab web</title><p>an internet web server</p>\n"
        )

    def _start_daemons(self, mqtt: bool) -> None:
        for index, (name, address) in enumerate(t.SBC_ADDRESSES.items()):
            argv = sip_peer.sipp_argv(
                address,
                t.SIP_PORT,
                control_port=sip_peer.CONTROL_PORT_BASE + index,
                error_file=self.log_dir / f"{name}.errors.log",
            )
            self.spawn(t.SBC, argv, name=name)
            # Beside each SBC, the provider's UDP echo responder (RFC 862) on port 7.
            self.spawn(
                t.SBC,
                [sys.executable, "-m", "hil.sims.udp_echo", "--bind", address,
                 "--port", str(t.ECHO_PORT)],
                name=echo_name(name),
            )
        self.spawn(
            t.WEB,
            [sys.executable, "-m", "http.server", str(t.WEB_PORT), "--bind", t.WEB_ADDRESS,
             "--directory", str(self.lab_dir / "www")],
            name="web",
        )
        # The LTE modem on the CPE's USB port: the AT simulator on a real pty, linked at a
        # fixed path the agent's config names.
        modem_link = self.lab_dir / MODEM_LINK_NAME
        self.spawn(
            t.CPE,
            [sys.executable, "-m", "hil.sims.at_modem", "--profile", "quectel-ec25",
             "--link", str(modem_link), "--boot-s", "0.5",
             "--control", f"127.0.0.1:{t.MODEM_CONTROL_PORT}"],
            name="modem",
        )
        wanted = {name: (t.SBC, "udp", a, t.SIP_PORT) for name, a in t.SBC_ADDRESSES.items()}
        wanted.update(
            {echo_name(name): (t.SBC, "udp", a, t.ECHO_PORT) for name, a in t.SBC_ADDRESSES.items()}
        )
        wanted["web"] = (t.WEB, "tcp", t.WEB_ADDRESS, t.WEB_PORT)
        wanted["modem"] = (t.CPE, "tcp", "127.0.0.1", t.MODEM_CONTROL_PORT)
        if mqtt:
            conf = self.lab_dir / "mosquitto.conf"
            conf.write_text(
                f"listener {t.MQTT_PORT} {t.MQTT_ADDRESS}\nallow_anonymous true\n"
                "persistence false\nlog_dest stdout\n"
            )
            self.spawn(t.SBC, ["mosquitto", "-c", str(conf)], name="mqtt")
            wanted["mqtt"] = (t.SBC, "tcp", t.MQTT_ADDRESS, t.MQTT_PORT)
        self._wait_listening(wanted)
        if not wait_until(modem_link.exists, 10):
            raise LabError(f"the simulated modem did not start; see {self.log_dir}/modem.log")
        self.modem("set_signal", **t.MODEM_SIGNAL)

    def _wait_listening(self, wanted: dict[str, tuple[str, str, str, int]]) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        pending = dict(wanted)
        while pending:
            for name, (node, proto, address, port) in list(pending.items()):
                if self._listening(node, proto, address, port):
                    del pending[name]
                elif (child := self._children.get(name)) and child.poll() is not None:
                    raise LabError(
                        f"{name} exited with status {child.returncode} while starting; "
                        f"see {self.log_dir / (name + '.log')}: {self._log_tail(name)}"
                    )
            if pending and time.monotonic() > deadline:
                raise LabError(
                    f"{', '.join(pending)} did not start listening within {READY_TIMEOUT_S:g} s; "
                    f"see the logs in {self.log_dir}"
                )
            if pending:
                time.sleep(0.02)

    def _listening(self, node: str, proto: str, address: str, port: int) -> bool:
        flag = "-Hlun" if proto == "udp" else "-Hltn"
        result = self.exec(node, ["ss", flag, "src", f"{address}:{port}"])
        return result.returncode == 0 and bool(result.stdout.strip())

    def _log_tail(self, name: str, lines: int = 5) -> str:
        with contextlib.suppress(OSError):
            text = (self.log_dir / f"{name}.log").read_text(errors="replace")
            return " | ".join(text.strip().splitlines()[-lines:])
        return "(no log)"

    # --- tearing down ----------------------------------------------------------------------

    def namespaces(self) -> list[str]:
        """The lab's namespaces that exist now."""
        ours = {t.namespace(self.prefix, node) for node in t.NODES}
        return [ns for ns in _existing_namespaces() if ns in ours]

    def down(self) -> None:
        """Stop the lab's processes, delete its namespaces, remove its files. Idempotent,
        and works after a crash: leftovers are found by prefix and by pid file."""
        existing = self.namespaces()
        # Daemons this lab recorded (in their own session: signal the whole group) ...
        records = [r for r in procs.read_pidfiles(self.pid_dir) if procs.is_alive(r)]
        procs.terminate([r.pid for r in records], group=True)
        # ... then anything else still inside the lab's namespaces (an agent, a stream).
        strays: list[int] = []
        for ns in existing:
            result = _run(["ip", "netns", "pids", ns])
            strays += [int(p) for p in result.stdout.split() if p.isdigit()]
        procs.terminate([p for p in strays if p != os.getpid()])
        for child in self._children.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout=2)
        self._children.clear()
        for step in plan.teardown_steps(self.prefix, existing):
            self._run(step, check=False)
        self._remove_dir()
        with contextlib.suppress(OSError):
            self._index_file().unlink()
        with contextlib.suppress(OSError):
            INDEX_DIR.rmdir()  # only when no other lab is recorded there
        self._netem = None

    def _remove_dir(self) -> None:
        # Only directories the lab made (they hold its marker), never a user's directory.
        for directory in {self.lab_dir, self._recorded_dir()}:
            if (directory / MARKER).exists():
                shutil.rmtree(directory, ignore_errors=True)

    # --- running things in the lab --------------------------------------------------------

    def exec(
        self, node: str, argv: list[str], *, check: bool = False, timeout: float | None = 30.0,
        **kwargs: Any,
    ) -> subprocess.CompletedProcess[str]:
        """Run a command in a node's namespace and wait; text output captured by default.
        A `python -m hil...` command finds the repository (cwd and PYTHONPATH set)."""
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("text", True)
        kwargs.setdefault("cwd", REPO_ROOT)
        kwargs.setdefault("env", _child_env())
        return subprocess.run(
            ["ip", "netns", "exec", self.ns(node), *argv], check=check, timeout=timeout, **kwargs
        )

    def spawn(
        self, node: str, argv: list[str], *, name: str | None = None, **popen_kwargs: Any
    ) -> subprocess.Popen[bytes]:
        """Start a long-running process in a node's namespace, in its own session.

        With a `name`, stdout and stderr go to `<lab dir>/logs/<name>.log` (unless given)
        and the pid is recorded, so `down()` stops it even after a crash of this process.
        Without a name the caller owns the process (`down()` still stops it, as a
        process in the lab's namespaces).
        """
        popen_kwargs.setdefault("cwd", REPO_ROOT)
        popen_kwargs.setdefault("env", _child_env())
        popen_kwargs.setdefault("stdin", subprocess.DEVNULL)
        popen_kwargs.setdefault("start_new_session", True)
        log = None
        if name is not None:
            if name in self._children and self._children[name].poll() is None:
                raise LabError(f"a process named {name!r} is already running in the lab")
            self.log_dir.mkdir(parents=True, exist_ok=True)
            if "stdout" not in popen_kwargs:
                log = (self.log_dir / f"{name}.log").open("ab")
                popen_kwargs["stdout"] = log
                popen_kwargs.setdefault("stderr", subprocess.STDOUT)
        try:
            child = subprocess.Popen(["ip", "netns", "exec", self.ns(node), *argv], **popen_kwargs)
        finally:
            if log is not None:
                log.close()
        if name is not None:
            self._children[name] = child
            procs.write_pidfile(self.pid_dir, name, child.pid)
        return child

    def stop(self, name: str, grace_s: float = 2.0) -> None:
        """Stop a process started with `spawn(..., name=...)`."""
        records = [r for r in procs.read_pidfiles(self.pid_dir) if r.name == name]
        procs.terminate([r.pid for r in records if procs.is_alive(r)], grace_s=grace_s,
                        group=True)
        child = self._children.pop(name, None)
        if child is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout=grace_s)
        with contextlib.suppress(OSError):
            (self.pid_dir / f"{name}.pid").unlink()

    @staticmethod
    def python(module: str, *args: str) -> list[str]:
        """argv running a module of this repository with the current interpreter."""
        return [sys.executable, "-m", module, *args]

    # --- impairments -------------------------------------------------------------------------

    def impair(self, link: str, kind: str, value: float | str | None = None) -> None:
        """Impair a link, or a target.

        `impair("primary"|"cellular", kind, value)`: kind is blackhole, loss (value = %),
        down, up, rate (value = kbit/s), delay (value = ms; needs netem), clear.
        `impair("target", "dead"|"alive", address)` or `impair("target", "clear")`.
        """
        try:
            if link == "target":
                steps = plan.target_impairment_steps(kind, None if value is None else str(value))
            else:
                number = None if value is None else float(value)
                if kind == "delay" and not self.has_netem():
                    raise LabError(
                        "this kernel has no netem qdisc (sch_netem), so 'delay' is unavailable; "
                        "use loss, rate or blackhole instead"
                    )
                steps = plan.link_impairment_steps(link, kind, number)
        except (plan.PlanError, ValueError) as exc:
            raise LabError(str(exc)) from exc
        if not self.namespaces():
            raise LabError(f"the lab {self.prefix!r} is not up; run `python -m hil.lab up` first")
        for step in steps:
            self._run(step)

    def has_netem(self) -> bool:
        """Whether this kernel offers netem (tried on the internet core's loopback)."""
        if self._netem is None:
            added = self.exec(t.INET, ["tc", "qdisc", "add", "dev", "lo", "root", "netem",
                                       "delay", "1ms"])
            self._netem = added.returncode == 0
            if self._netem:
                self.exec(t.INET, ["tc", "qdisc", "del", "dev", "lo", "root"])
        return self._netem

    # --- checks ----------------------------------------------------------------------------

    def carrier(self, node: str, ifname: str) -> bool:
        """The interface's carrier as the kernel reports it inside the namespace."""
        result = self.exec(node, ["cat", f"/sys/class/net/{ifname}/carrier"])
        return result.returncode == 0 and result.stdout.strip() == "1"

    def ping(self, node: str, address: str, *, count: int = 1, timeout_s: float = 1.0) -> bool:
        return self._probe(node, ["ping", address, "--count", str(count),
                                  "--timeout", str(timeout_s)])["received"] > 0

    def sip_options(self, node: str, address: str, *, port: int = t.SIP_PORT,
                    timeout_s: float = 1.0) -> dict[str, Any]:
        """Send a SIP OPTIONS from the node; the parsed final response, `answered` False if none."""
        return self._probe(node, ["sip-options", address, "--port", str(port),
                                  "--timeout", str(timeout_s)])

    def modem(self, op: str, **args: Any) -> Any:
        """Drive the simulated modem through its side channel (hil/sims/at_modem.py
        CONTROL_OPS: remove_sim, insert_sim, set_signal, set_registration, ...)."""
        reply = self._probe(t.CPE, ["modem", op, "--port", str(t.MODEM_CONTROL_PORT),
                                    "--args", json.dumps(args)])
        if not reply.get("ok"):
            raise LabError(f"the simulated modem refused {op}: {reply.get('error')}")
        return reply.get("result")

    def http_get(self, node: str, url: str, *, timeout_s: float = 2.0) -> int | None:
        """The HTTP status of GET url from the node, or None when unreachable."""
        return self._probe(node, ["http", url, "--timeout", str(timeout_s)])["status"]

    def _probe(self, node: str, args: list[str]) -> dict[str, Any]:
        result = self.exec(node, self.python("hil.lab.probe", *args))
        try:
            return json.loads(result.stdout)
        except json.JSONDecodeError as exc:
            raise LabError(f"probe {args[0]} in {self.ns(node)} failed: {result.stderr}") from exc

    def status(self) -> dict[str, Any]:
        """What is alive: namespaces, daemons, the CPE's link carriers, impairments."""
        return lab_status(self)

    def _run(self, step: plan.Step, check: bool = True) -> subprocess.CompletedProcess[str]:
        argv = list(step.argv)
        if step.node is not None:
            ns = self.ns(step.node)
            argv = ["ip", "-n", ns, *argv[1:]] if argv[0] == "ip" else [
                "ip", "netns", "exec", ns, *argv]
        result = _run(argv, step.stdin)
        if check and result.returncode != 0 and not step.may_fail:
            raise LabError(
                f"lab step '{step.why}' failed: {' '.join(argv)}: {result.stderr.strip()}"
            )
        return result


def echo_name(sbc_name: str) -> str:
    """The echo responder's process name beside an SBC ('sbc-east' -> 'echo-east')."""
    return "echo-" + sbc_name.removeprefix("sbc-")


def wait_until(predicate: Callable[[], bool], timeout_s: float, interval_s: float = 0.05) -> bool:
    """Poll `predicate` until it is true (True) or `timeout_s` passes (False)."""
    deadline = time.monotonic() + timeout_s
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval_s)


def _run(argv: list[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=30)


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    path = env.get("PYTHONPATH")
    env["PYTHONPATH"] = f"{REPO_ROOT}{os.pathsep}{path}" if path else str(REPO_ROOT)
    return env


def _existing_namespaces() -> list[str]:
    result = _run(["ip", "netns", "list"])
    return [line.split()[0] for line in result.stdout.splitlines() if line.strip()]

