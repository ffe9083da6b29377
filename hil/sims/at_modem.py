"""An AT modem on a real pty: Quectel EC25/EG25-G/RM500Q, Sierra EM7455, Telit LE910 profiles.

One simulator for the tests, the lab and the demo. The agent opens the pty's slave side
with pyserial exactly as it opens /dev/ttyUSB2. What it does, with its evidence, is in
docs/sims-modem.md; in short:

- V.250 framing: echo on after power-up (E1) until ATE0, replies as
  <CR><LF>text<CR><LF> ... <CR><LF>OK<CR><LF>, ERROR or +CME ERROR per AT+CMEE (0/1/2),
  commands concatenated with ";", lines not starting with AT ignored.
- 27.007: +CGMI/+CGMM/+CGMR/+CGSN, +CPIN, +CFUN (1,1 restarts), +CREG/+CGREG/+CEREG/
  +C5GREG (n=0/1/2, unsolicited reports on change), +COPS (format 0/2), +CSQ, +CESQ, +CCLK.
- Vendors: Quectel +QENG="servingcell" (LTE, NR5G-NSA three lines, NR5G-SA), +QCSQ, +QCCID,
  +QGPS/+QGPSLOC, +QLTS, RDY after a restart; Sierra !GSTATUS?, !ICCID?, !RESET; Telit
  #RFSTS, +ICCID/#CCID, #QSS, #REBOOT.
- Side channel (thread-safe methods; the same names over --control): signal, registration,
  cell, SIM removed/inserted, radio, network time, GNSS, hang, slow replies, restart,
  unsolicited codes now or before/inside/after the next reply, garbage bytes.

Standalone: python -m hil.sims.at_modem --profile quectel-ec25 --link /tmp/modem0
"""

from __future__ import annotations

import argparse
import contextlib
import heapq
import json
import os
import select
import signal
import socketserver
import sys
import threading
import time
import tty
from dataclasses import dataclass, field
from typing import Any

from hil.sims.at_modem_commands import (
    CME_TEXT,
    HANDLERS,
    VENDOR_HANDLERS,
    CmeError,
    PlainError,
    parse,
    split_commands,
)


@dataclass(frozen=True)
class Profile:
    key: str
    vendor: str  # "quectel", "sierra", "telit"
    manufacturer: str
    model: str
    revision: str
    imei: str
    reset_command: str
    #: Printed when the module is up again after a restart (Quectel: RDY and friends).
    boot_urcs: tuple[str, ...] = ()
    nr5g: bool = False
    #: QENG/QCSQ LTE SINR in 1/5 dB from -20 dB (EC2x manuals) rather than dB.
    sinr_fifth_db: bool = True
    default_cmee: int = 0


PROFILES: dict[str, Profile] = {
    p.key: p
    for p in (
        Profile("quectel-ec25", "quectel", "Quectel", "EC25", "EC25AFAR05A07M4G",
                "866834041234567", "AT+CFUN=1,1",
                ("RDY", "+CPIN: READY", "+QUSIM: 1", "+QIND: SMS DONE"), default_cmee=1),
        Profile("quectel-eg25", "quectel", "Quectel", "EG25", "EG25GGBR07A08M2G",
                "866834042345678", "AT+CFUN=1,1",
                ("RDY", "+CPIN: READY", "+QUSIM: 1", "+QIND: SMS DONE"), default_cmee=1),
        Profile("quectel-rm500q", "quectel", "Quectel", "RM500Q-GL", "RM500QGLABR11A06M4G",
                "866834043456789", "AT+CFUN=1,1",
                ("RDY", "+CPIN: READY", "+QUSIM: 1", "+QIND: SMS DONE"), nr5g=True,
                sinr_fifth_db=False, default_cmee=1),
        Profile("sierra-em7455", "sierra", "Sierra Wireless, Incorporated", "EM7455",
                "SWI9X30C_02.33.03.00 r8209 CARMD-EV-FRMWR2 2019/08/28 20:59:30",
                "359072061234567", "AT!RESET"),
        Profile("telit-le910", "telit", "Telit", "LE910C4-NF", "25.30.224",
                "354616091234567", "AT#REBOOT"),
    )
}


@dataclass
class Radio:
    """What the network looks like to the simulated modem (changed through the side channel)."""

    sim_present: bool = True
    iccid: str = "8901260123456789012"  # 19 digits; the card pads it with F
    cfun: int = 1
    stat: int = 1  # 27.007 <stat>
    mode: str = "LTE"  # "LTE", "NR5G-NSA", "NR5G-SA", "WCDMA"
    mcc: str = "310"
    mnc: str = "260"
    operator: str = "T-Mobile"
    tac: int = 0x2B10
    cell_id: int = 0x0A1B2C03  # eNB 0x0A1B2C (662316), cell 3
    pci: int = 101
    earfcn: int = 66786
    band: int = 66
    rssi_dbm: int = -65
    rsrp_dbm: int = -95
    rsrq_db: float = -10.0
    sinr_db: float = 13.0
    nr_rsrp_dbm: int = -90
    nr_rsrq_db: float = -11.0
    nr_sinr_db: float = 15.0
    nr_band: int = 71
    nr_arfcn: int = 126490
    gnss: tuple[float, float] | None = None
    network_utc_s: float | None = None
    network_set_at: float = 0.0
    tz_quarters: int = -20

    @property
    def registered(self) -> bool:
        return self.sim_present and self.cfun == 1 and self.stat in (1, 5)

    @property
    def act(self) -> int:
        return {"LTE": 7, "NR5G-NSA": 13, "NR5G-SA": 11, "WCDMA": 2}.get(self.mode, 7)


@dataclass
class Session:
    """What a restart forgets (nothing is stored with AT&W here)."""

    echo: bool = True
    cmee: int = 0
    reg_n: dict[str, int] = field(
        default_factory=lambda: {"+CREG": 0, "+CGREG": 0, "+CEREG": 0, "+C5GREG": 0}
    )
    cops_format: int = 0
    gnss_on: bool = False
    qss: bool = False


class AtModemSim:
    """`with AtModemSim("quectel-ec25") as sim: AtChannel(sim.path)`; side channel below."""

    def __init__(self, profile: str = "quectel-ec25", *, link: str | None = None,
                 boot_s: float = 0.3) -> None:
        if profile not in PROFILES:
            raise ValueError(f"unknown profile {profile!r}; use one of {sorted(PROFILES)}")
        self.profile = PROFILES[profile]
        self.radio = Radio()
        self.session = Session(cmee=self.profile.default_cmee)
        self.link = link
        self.boot_s = boot_s
        self.path = ""
        self.commands: list[str] = []  # every command line received, for tests
        self.restarts = 0
        self._lock = threading.RLock()
        self._master = self._slave = -1
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._inbuf = b""
        self._booting_until = 0.0
        self._hung = False
        self._delays: list[tuple[str, float, int | None]] = []
        self._scripted: list[tuple[str, list[str], str, int]] = []
        self._pending: dict[str, list[bytes]] = {"before": [], "mid": [], "after": []}
        self._timers: list[tuple[float, int, Any]] = []
        self._seq = 0

    # -- life cycle ----------------------------------------------------------------------

    def start(self) -> str:
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)  # no line discipline: the bytes are the modem's
        self.path = os.ttyname(self._slave)
        if self.link:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.link)
            os.symlink(self.path, self.link)
        self._thread = threading.Thread(target=self._run, name="at-modem-sim", daemon=True)
        self._thread.start()
        return self.link or self.path

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2.0)
        for fd in (self._master, self._slave):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._master = self._slave = -1
        if self.link:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.link)

    def unplug(self) -> None:
        """The modem vanishes (USB gone): the pty's master side closes, the port hangs up."""
        with self._lock:
            self._stop.set()
            with contextlib.suppress(OSError):
                os.close(self._master)
            self._master = -1

    def __enter__(self) -> AtModemSim:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- side channel --------------------------------------------------------------------

    def set_signal(self, **values: float) -> None:
        """rssi_dbm, rsrp_dbm, rsrq_db, sinr_db, nr_rsrp_dbm, nr_rsrq_db, nr_sinr_db."""
        with self._lock:
            for key, value in values.items():
                if not hasattr(self.radio, key):
                    raise ValueError(f"no signal field {key}")
                setattr(self.radio, key, value)

    def set_cell(self, **values: Any) -> None:
        """mcc, mnc, operator, tac, cell_id, pci, earfcn, band, mode; reports a change."""
        with self._lock:
            for key, value in values.items():
                if not hasattr(self.radio, key):
                    raise ValueError(f"no cell field {key}")
                setattr(self.radio, key, value)
            self.report_registration()

    def set_registration(self, stat: int) -> None:
        """27.007 <stat>: 0 not registered, 1 home, 2 searching, 3 denied, 5 roaming."""
        with self._lock:
            self.radio.stat = stat
            self.report_registration()

    def remove_sim(self) -> None:
        with self._lock:
            self.radio.sim_present = False
            if self.profile.vendor == "quectel":
                self._emit(["+CPIN: NOT READY"])
            if self.profile.vendor == "telit" and self.session.qss:
                self._emit(["#QSS: 0"])
            self.report_registration()

    def insert_sim(self) -> None:
        with self._lock:
            self.radio.sim_present = True
            if self.profile.vendor == "quectel":
                self._emit(["+CPIN: READY"])
            if self.profile.vendor == "telit" and self.session.qss:
                self._emit(["#QSS: 3"])
            self.report_registration()

    def set_radio(self, on: bool) -> None:
        with self._lock:
            self.radio.cfun = 1 if on else 4
            self.report_registration()

    def set_network_time(self, utc_s: float | None, tz_quarters: int = -20) -> None:
        with self._lock:
            self.radio.network_utc_s = utc_s
            self.radio.network_set_at = time.monotonic()
            self.radio.tz_quarters = tz_quarters

    def set_gnss(self, lat: float | None = None, lon: float | None = None) -> None:
        with self._lock:
            self.radio.gnss = None if lat is None or lon is None else (lat, lon)

    def hang(self) -> None:
        """Stop answering (and echoing) until `unhang()` or a restart."""
        with self._lock:
            self._hung = True

    def unhang(self) -> None:
        with self._lock:
            self._hung = False

    def slow(self, seconds: float, command: str = "", count: int | None = 1) -> None:
        """Delay the reply to the next `count` commands starting with `command`."""
        with self._lock:
            self._delays.append((command.upper(), seconds, count))

    def restart(self) -> None:
        """Power-cycle: silent for boot_s, then the profile's boot lines; settings forgotten."""
        with self._lock:
            self._begin_restart()

    def script_reply(self, command: str, lines: list[str], final: str = "OK",
                     count: int = 1) -> None:
        """Answer the next `count` commands equal to `command` with `lines` and `final`
        instead (garbled or truncated replies, odd firmware)."""
        with self._lock:
            self._scripted.append((command.upper(), list(lines), final, count))

    def inject_urc(self, *lines: str, where: str = "now") -> None:
        """Unsolicited lines now, or "before"/"mid"/"after" the next reply's lines."""
        self.inject_raw(b"".join(b"\r\n" + ln.encode() + b"\r\n" for ln in lines), where=where)

    def inject_raw(self, data: bytes, where: str = "now") -> None:
        """Any bytes (garbage, half lines) now or around/inside the next reply."""
        with self._lock:
            if where == "now":
                self._write(data)
            elif where in self._pending:
                self._pending[where].append(data)
            else:
                raise ValueError("where is one of now, before, mid, after")

    @property
    def booting(self) -> bool:
        return time.monotonic() < self._booting_until

    # -- the pty loop --------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            timeout = 0.05
            with self._lock:
                if self._timers:
                    timeout = max(0.0, min(timeout, self._timers[0][0] - time.monotonic()))
            try:
                ready, _, _ = select.select([self._master], [], [], timeout)
            except (OSError, ValueError):
                return
            self._fire_timers()
            if not ready:
                continue
            try:
                data = os.read(self._master, 4096)
            except OSError:
                return
            self._feed(data)

    def _fire_timers(self) -> None:
        now = time.monotonic()
        with self._lock:
            while self._timers and self._timers[0][0] <= now:
                _, _, fn = heapq.heappop(self._timers)
                fn()

    def _later(self, delay_s: float, fn: Any) -> None:
        self._seq += 1
        heapq.heappush(self._timers, (time.monotonic() + delay_s, self._seq, fn))

    def _feed(self, data: bytes) -> None:
        with self._lock:
            if self.booting or self._hung:
                return  # a restarting or hung modem neither echoes nor answers
            if self.session.echo:
                self._write(data)
            self._inbuf += data
            while b"\r" in self._inbuf:
                line, _, self._inbuf = self._inbuf.partition(b"\r")
                text = line.replace(b"\n", b"").decode("latin-1").strip()
                if text:
                    self._command_line(text)

    def _write(self, data: bytes) -> None:
        with contextlib.suppress(OSError):
            os.write(self._master, data)

    def _emit(self, lines: list[str]) -> None:
        if not self.booting:
            self._write(b"".join(b"\r\n" + ln.encode() + b"\r\n" for ln in lines))

    # -- commands ------------------------------------------------------------------------

    def _command_line(self, text: str) -> None:
        self.commands.append(text)
        if not text.upper().startswith("AT"):
            return  # V.250 5.2.1: only what follows "AT" is a command
        info: list[str] = []
        final = "OK"
        scripted = self._take_scripted(text)
        if scripted is not None:
            self._write(self._frame(*scripted))
            return
        for cmd in split_commands(text[2:]):
            try:
                out = self._execute(cmd)
            except CmeError as err:
                final = self._error_text(err.code)
                break
            except PlainError:
                final = "ERROR"
                break
            info.extend(out)
        delay = self._delay_for(text)
        reply = self._frame(info, final)
        if delay > 0:
            self._later(delay, lambda: self._write(reply))
        else:
            self._write(reply)
        if final == "OK" and text.upper().replace(" ", "") in _restart_commands(self.profile):
            self._begin_restart()

    def _take_scripted(self, text: str) -> tuple[list[str], str] | None:
        for i, (command, lines, final, count) in enumerate(self._scripted):
            if text.upper() == command:
                if count <= 1:
                    self._scripted.pop(i)
                else:
                    self._scripted[i] = (command, lines, final, count - 1)
                return lines, final
        return None

    def _delay_for(self, text: str) -> float:
        upper = text.upper()
        for i, (prefix, seconds, count) in enumerate(self._delays):
            if upper.startswith(prefix):
                if count is not None:
                    if count <= 1:
                        self._delays.pop(i)
                    else:
                        self._delays[i] = (prefix, seconds, count - 1)
                return seconds
        return 0.0

    def _frame(self, info: list[str], final: str) -> bytes:
        before, mid, after = (b"".join(self._pending[k]) for k in ("before", "mid", "after"))
        for k in self._pending:
            self._pending[k] = []
        body = [b"\r\n" + ln.encode() + b"\r\n" for ln in info]
        if body:
            body.insert(1 if len(body) > 1 else len(body), mid)
        else:
            body.append(mid)
        return before + b"".join(body) + b"\r\n" + final.encode() + b"\r\n" + after

    def _error_text(self, code: int) -> str:
        if self.session.cmee == 1:
            return f"+CME ERROR: {code}"
        if self.session.cmee == 2:
            return f"+CME ERROR: {CME_TEXT.get(code, 'unknown')}"
        return "ERROR"

    def _begin_restart(self) -> None:
        self.restarts += 1
        self._booting_until = time.monotonic() + self.boot_s
        self._hung = False
        self._inbuf = b""
        self._later(self.boot_s + 0.001, self._booted)

    def _booted(self) -> None:
        self.session = Session(cmee=self.profile.default_cmee)
        self.radio.cfun = 1
        lines = [ln for ln in self.profile.boot_urcs if self.radio.sim_present or "CPIN" not in ln]
        self._emit(lines)

    def report_registration(self) -> None:
        r = self.radio
        stat = r.stat if r.sim_present and r.cfun == 1 else 0
        for name, n in self.session.reg_n.items():
            if n == 0 or (name == "+C5GREG" and not self.profile.nr5g):
                continue
            if name == "+C5GREG" and r.mode != "NR5G-SA":
                self._emit([f"{name}: 0"])
                continue
            if n >= 2 and stat in (1, 5):
                self._emit([f'{name}: {stat},"{r.tac:04X}","{r.cell_id:X}",{r.act}'])
            else:
                self._emit([f"{name}: {stat}"])

    def _execute(self, cmd: str) -> list[str]:
        upper = cmd.upper()
        if upper in ("", "Z", "&F", "V1", "Q0"):
            return []
        if upper in ("E0", "E1"):
            self.session.echo = upper == "E1"
            return []
        if upper == "I":
            p = self.profile
            return [p.manufacturer, p.model, f"Revision: {p.revision}"]
        name, kind, args = parse(cmd)
        handler = HANDLERS.get(name) or VENDOR_HANDLERS.get((self.profile.vendor, name))
        if handler is None:
            raise PlainError
        return handler(self, kind, args)


def _restart_commands(profile: Profile) -> set[str]:
    return {"AT+CFUN=1,1", profile.reset_command.upper()}


# -- standalone ----------------------------------------------------------------------------

#: Side-channel operations allowed over --control (JSON lines: {"op": ..., "args": {...}}).
CONTROL_OPS = ("set_signal", "set_cell", "set_registration", "remove_sim", "insert_sim",
               "set_radio", "set_network_time", "set_gnss", "hang", "unhang", "slow",
               "restart", "inject_urc")


def serve_control(sim: AtModemSim, host: str, port: int) -> socketserver.ThreadingTCPServer:
    class Handler(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            for raw in self.rfile:
                try:
                    req = json.loads(raw)
                    if req.get("op") not in CONTROL_OPS:
                        raise ValueError(f"unknown op {req.get('op')!r}")
                    args = req.get("args") or {}
                    if req["op"] == "inject_urc":
                        sim.inject_urc(*args.pop("lines"), **args)
                        result = None
                    else:
                        result = getattr(sim, req["op"])(**args)
                    reply: dict[str, Any] = {"ok": True, "result": result}
                except Exception as exc:  # the reply carries it; the server keeps going
                    reply = {"ok": False, "error": str(exc)}
                self.wfile.write(json.dumps(reply).encode() + b"\n")

    server = socketserver.ThreadingTCPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m hil.sims.at_modem",
                                 description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--profile", default="quectel-ec25", choices=sorted(PROFILES))
    ap.add_argument("--link", help="make PATH a symlink to the pty (e.g. /tmp/modem0)")
    ap.add_argument("--control", help="HOST:PORT for the JSON-lines side channel")
    ap.add_argument("--boot-s", type=float, default=3.0, help="silence after a restart")
    args = ap.parse_args(argv)
    sim = AtModemSim(args.profile, link=args.link, boot_s=args.boot_s)
    sim.set_network_time(time.time(), -20)
    sim.start()
    control = None
    if args.control:
        host, _, port = args.control.rpartition(":")
        server = serve_control(sim, host or "127.0.0.1", int(port))
        control = list(server.server_address)[:2]
    print(json.dumps({"port": sim.path, "link": args.link, "control": control}), flush=True)
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    done.wait()
    sim.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
