"""Meter benchmark: metering error against the kernel in the lab, and bytes lost to kill -9.

    python -m hil.bench.meter --json [--packets 20000] [--trials 20] [--seed N]

With --json prints one JSON object: {"error_pct": X, "kill9_trials": N, "bytes_lost": N};
without it, the same with the details of both measurements.

- error_pct: the lab's phone sends `--packets` UDP datagrams of random sizes (40-1400
  bytes of payload) to the SBC, which echoes each; the Linux driver forces the LTE
  path on (policy applied, switch at CELLULAR), and the real `Meter` polls `lte0`
  through the real `LinuxRouterDriver`. The truth is an nftables counter in the CPE's
  namespace on `iifname lte0` (prerouting, before anything else) and `oifname lte0`
  (postrouting, after NAT), which counts IP bytes. error = (metered - truth) / truth.
- kill9: a real subprocess (`child` below) meters a counter file that a thread here
  keeps moving, and is killed with SIGKILL at random moments `--trials` times (a new
  one each time, as systemd would restart it). At the end one more child reconciles
  and exits cleanly. bytes_lost = bytes the counters moved - bytes the books hold;
  the counters survive every kill, so it must be 0 (and never negative: no double
  counting).

The pieces are used by tests/component/test_meter_kill9.py and tests/lab/test_meter_lab.py.
Subcommands for the lab and the harness: `child`, `udp-echo`, `udp-send`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.clock import Clock
from agent.meter.admin import read_books
from agent.meter.budget import Plan
from agent.meter.ledger import MeterDoc, MeterRules
from agent.meter.meter import Meter
from agent.meter.settings import MeterSettings
from agent.store import Store
from drivers.types import Counters

ROOT = Path(__file__).resolve().parents[2]
TB = 10**12

# --- a counter source the harness controls ----------------------------------------------


class CounterFile:
    """Interface counters kept in a JSON file: the harness writes, the child reads.

    Written by `os.replace`, so a reader sees the old or the new numbers, never half.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def write(self, rx: int, tx: int, rx_packets: int, tx_packets: int, boot: str) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"rx": rx, "tx": tx, "rxp": rx_packets, "txp": tx_packets,
                                   "boot": boot}))
        os.replace(tmp, self.path)

    def read(self) -> dict[str, Any]:
        return dict(json.loads(self.path.read_text()))

    async def interface_counters(self, interface: str) -> Counters:
        data = self.read()
        return Counters(interface, data["rx"], data["tx"], data["rxp"], data["txp"], data["boot"])


class Traffic:
    """A thread that keeps the counter file moving (random bytes every few ms)."""

    def __init__(self, counters: CounterFile, rng: random.Random) -> None:
        self.counters = counters
        self.rng = rng
        self.rx = self.tx = self.packets = 0
        self.boot = "router-boot-1"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.counters.write(0, 0, 0, 0, self.boot)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(0.003):
            self.rx += self.rng.randint(60, 150_000)
            self.tx += self.rng.randint(60, 40_000)
            self.packets += 1
            self.counters.write(self.rx, self.tx, self.packets, self.packets, self.boot)


def _child_settings(poll_s: float, persist_s: float) -> MeterSettings:
    rules = MeterRules(plan=Plan(cap_bytes=TB), timezone="UTC")
    return MeterSettings(interface="lte0", rules=rules, driver="file",
                         poll_interval_s=poll_s, persist_interval_s=persist_s)


async def _child(db: Path, counters: Path, ready: Path, poll_s: float, persist_s: float) -> None:
    store = Store(db)
    meter = Meter(CounterFile(counters), store, Clock(), _child_settings(poll_s, persist_s))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    task = asyncio.create_task(meter.run())
    await asyncio.sleep(0)
    while meter.writes == 0:  # the start's reconciliation is on disk
        await asyncio.sleep(poll_s)
    ready.write_text(str(os.getpid()))
    await stop.wait()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    store.close()


def _spawn_child(work: Path, poll_s: float, persist_s: float) -> subprocess.Popen[bytes]:
    ready = work / "ready"
    ready.unlink(missing_ok=True)
    argv = [sys.executable, "-m", "hil.bench.meter", "child", "--db", str(work / "agent.db"),
            "--counters", str(work / "counters.json"), "--ready", str(ready),
            "--poll-s", str(poll_s), "--persist-s", str(persist_s)]
    env = dict(os.environ)
    env["PYTHONPATH"] = f"{ROOT}{os.pathsep}{env['PYTHONPATH']}" if env.get("PYTHONPATH") \
        else str(ROOT)
    log = (work / "child.log").open("ab")
    try:
        return subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=log)
    finally:
        log.close()


def _wait(predicate: Callable[[], bool], timeout_s: float, what: str,
          child: subprocess.Popen[bytes] | None = None, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if child is not None and child.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:] if log is not None else ""
            raise RuntimeError(f"the meter child exited ({child.returncode}) while waiting "
                               f"for {what}:\n{tail}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.01)


def _stored_ip(doc: MeterDoc) -> int:
    return (doc.cycle.totals.ip_bytes if doc.cycle else 0) + doc.held_totals.ip_bytes


def kill9_trials(
    trials: int,
    work: Path,
    *,
    seed: int | None = None,
    poll_s: float = 0.02,
    persist_s: float = 0.25,
    max_delay_s: float = 0.5,
) -> dict[str, Any]:
    """SIGKILL a metering child `trials` times at random moments; count what was lost."""
    rng = random.Random(seed)
    work.mkdir(parents=True, exist_ok=True)
    counters = CounterFile(work / "counters.json")
    traffic = Traffic(counters, rng)
    ready = work / "ready"
    log = work / "child.log"
    delays: list[float] = []
    unwritten: list[int] = []
    try:
        for trial in range(trials):
            child = _spawn_child(work, poll_s, persist_s)
            try:
                _wait(ready.exists, 30, "the meter child to start", child, log)
                if trial == 0:
                    traffic.start()  # after the first baseline: every byte from here is ours
                delay = rng.uniform(0.0, max_delay_s)
                delays.append(round(delay, 3))
                time.sleep(delay)  # the random moment itself: nothing is awaited here
            finally:
                moved_before_kill = traffic.rx + traffic.tx
                child.send_signal(signal.SIGKILL)
                child.wait(10)
            # How far the counters had moved past the last write (a lower bound): the
            # next start must recover that from the counters.
            doc = read_books(work / "agent.db")
            if doc is not None and doc.reading is not None:
                written = doc.reading.rx_bytes + doc.reading.tx_bytes
                unwritten.append(max(0, moved_before_kill - written))
    finally:
        traffic.stop()
    sent = traffic.rx + traffic.tx
    # One more start: it reconciles from the stored raw reading, then exits cleanly.
    child = _spawn_child(work, poll_s, persist_s)
    try:
        _wait(ready.exists, 30, "the last meter child to start", child, log)

        def reconciled() -> bool:
            doc = read_books(work / "agent.db")
            return doc is not None and doc.reading is not None and \
                doc.reading.rx_bytes == traffic.rx and doc.reading.tx_bytes == traffic.tx

        _wait(reconciled, 30, "the reconciliation to be written", child, log)
    finally:
        child.send_signal(signal.SIGTERM)
        try:
            child.wait(10)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait(5)
    doc = read_books(work / "agent.db")
    counted = _stored_ip(doc) if doc is not None else 0
    return {
        "kill9_trials": trials,
        "bytes_sent": sent,
        "bytes_counted": counted,
        "bytes_lost": sent - counted,
        # Bytes the counters had moved past the last write when each child was killed
        # (a lower bound): what the next start had to recover by reconciling.
        "kills_past_last_write": sum(1 for u in unwritten if u > 0),
        "bytes_past_last_write_at_kills": sum(unwritten),
        "kill_delays_s": delays,
    }


# --- the lab: metered bytes against the kernel's IP byte count ------------------------------

TRUTH_TABLE = "meter_truth"
TRUTH_RULES = f"""
table inet {TRUTH_TABLE} {{
    comment "hil.bench.meter: IP bytes through lte0, the meter's reference"
    counter lte_rx {{ }}
    counter lte_tx {{ }}
    chain rx {{
        type filter hook prerouting priority -500; policy accept;
        iifname "lte0" counter name "lte_rx"
    }}
    chain tx {{
        type filter hook postrouting priority 500; policy accept;
        oifname "lte0" counter name "lte_tx"
    }}
}}
"""
ECHO_PORT = 16000


def _truth_bytes(lab: Any) -> int:
    listing = lab.exec("cpe", ["nft", "-j", "list", "counters", "table", "inet", TRUTH_TABLE],
                       check=True)
    total = 0
    for item in json.loads(listing.stdout)["nftables"]:
        if "counter" in item:
            total += int(item["counter"]["bytes"])
    return total


async def measure_lab_error(
    lab: Any, work: Path, *, packets: int = 20_000, seed: int = 1, pps: int = 5000
) -> dict[str, Any]:
    """Metering error (percent) of IP bytes through lte0 in a lab that is up."""
    from drivers.router.linux.driver import LinuxRouterDriver
    from drivers.types import VoipPath, VoipPolicy
    from hil.lab import Lab
    from hil.lab import topology as t

    work.mkdir(parents=True, exist_ok=True)
    sbc = next(iter(t.SBC_ADDRESSES.values()))
    policy = VoipPolicy(
        primary_interface=t.PRIMARY_IF,
        cellular_interface=t.CELLULAR_IF,
        cellular_gateway=t.CELLULAR_GATEWAY,
        lan_interfaces=(t.LAN_BRIDGE,),
        voip_prefixes=tuple(f"{a}/32" for a in t.SBC_ADDRESSES.values()),
    )
    lab.exec("cpe", ["nft", "-f", "-"], input=TRUTH_RULES, check=True)
    driver = LinuxRouterDriver(netns=lab.ns("cpe"), interfaces=(t.LAN_BRIDGE, t.CELLULAR_IF))
    store = Store(work / "agent.db")
    ready = work / "echo.ready"
    try:
        await driver.open()
        await driver.apply_policy(policy)
        await driver.set_voip_path(VoipPath.CELLULAR)
        lab.spawn("sbc", Lab.python("hil.bench.meter", "udp-echo", "--bind",
                                    f"{sbc}:{ECHO_PORT}", "--ready", str(ready)),
                  name="meter-echo")
        _wait(ready.exists, 10, "the SBC's UDP echo to listen")
        # Warm up: ARP for the carrier's gateway and conntrack before the baseline.
        # A few tries: right after a lab is built, first packets can be lost to ARP.
        for _attempt in range(5):
            warm = _send(lab, sbc, count=5, seed=seed, pps=100)
            if warm["echoed"]:
                break
        if warm["echoed"] == 0:
            raise RuntimeError(f"no echo via LTE from {sbc}: the LTE path is not working")
        settings = MeterSettings(interface=t.CELLULAR_IF,
                                 rules=MeterRules(plan=Plan(cap_bytes=TB, safety_margin_pct=0)),
                                 poll_interval_s=0.2, persist_interval_s=1.0)
        meter = Meter(driver, store, Clock(), settings)
        await meter.poll_once()  # the baseline
        truth_before = _truth_bytes(lab)
        task = asyncio.create_task(meter.run())
        sent = await asyncio.to_thread(_send, lab, sbc, count=packets, seed=seed, pps=pps)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await meter.poll_once()  # after the echoes stopped (the sender waited for quiet)
        truth = _truth_bytes(lab) - truth_before
        snap = meter.snapshot()
        meter.close()
        metered = int(snap["ip_bytes"])
        return {
            "error_pct": round(100.0 * (metered - truth) / truth, 5) if truth else None,
            "metered_ip_bytes": metered,
            "kernel_ip_bytes": truth,
            "packets_sent": sent["sent"],
            "packets_echoed": sent["echoed"],
            "counts_frames": True,
        }
    finally:
        lab.stop("meter-echo")
        with contextlib.suppress(Exception):
            await driver.remove_all()
        await driver.close()
        lab.exec("cpe", ["nft", "delete", "table", "inet", TRUTH_TABLE])
        store.close()


def _send(lab: Any, sbc: str, *, count: int, seed: int, pps: int) -> dict[str, Any]:
    from hil.lab import Lab

    result = lab.exec("phone", Lab.python("hil.bench.meter", "udp-send", "--to",
                                          f"{sbc}:{ECHO_PORT}", "--count", str(count),
                                          "--seed", str(seed), "--pps", str(pps)),
                      timeout=120)
    if result.returncode != 0:
        raise RuntimeError(f"udp-send failed: {result.stderr.strip()}")
    return dict(json.loads(result.stdout))


# --- lab helpers: a UDP echo and a paced sender of random sizes ------------------------------


def udp_echo(bind: tuple[str, int], ready: Path) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.bind(bind)
    ready.write_text("ready")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    while True:
        data, peer = sock.recvfrom(65535)
        sock.sendto(data, peer)


def udp_send(
    to: tuple[str, int], count: int, seed: int, pps: int,
    min_payload: int = 40, max_payload: int = 1400, quiet_s: float = 0.5,
) -> dict[str, Any]:
    """Send `count` datagrams of random sizes at `pps`, then collect echoes until quiet."""
    rng = random.Random(seed)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    sock.connect(to)
    sock.setblocking(False)
    echoed = sent_bytes = 0
    start = time.monotonic()
    for i in range(count):
        due = start + i / pps
        while (now := time.monotonic()) < due:
            echoed += _drain(sock)
            time.sleep(min(0.001, due - now))
        size = rng.randint(min_payload, max_payload)
        sock.send(bytes(size))
        sent_bytes += size
    last = time.monotonic()
    while time.monotonic() - last < quiet_s:
        got = _drain(sock)
        if got:
            echoed += got
            last = time.monotonic()
        else:
            time.sleep(0.01)
    return {"sent": count, "sent_payload_bytes": sent_bytes, "echoed": echoed}


def _drain(sock: socket.socket) -> int:
    got = 0
    while True:
        try:
            sock.recv(65535)
        except BlockingIOError:
            return got
        got += 1


def _endpoint(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


# --- the benchmark -------------------------------------------------------------------------


def run(trials: int, packets: int, seed: int | None, progress: bool) -> dict[str, Any]:
    from hil.lab import Lab

    def say(text: str) -> None:
        if progress:
            print(text, file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory(prefix="cpe-bench-meter-") as tmp:
        say(f"kill -9 trials: {trials}")
        kill9 = kill9_trials(trials, Path(tmp) / "kill9", seed=seed)
        say(f"bytes lost: {kill9['bytes_lost']} of {kill9['bytes_sent']}")
        with Lab(prefix="cpbm-") as lab:
            say(f"lab: {packets} datagrams via lte0")
            lab_result = asyncio.run(measure_lab_error(lab, Path(tmp) / "lab", packets=packets,
                                                       seed=seed or 1))
        say(f"error: {lab_result['error_pct']} %")
    return {
        "error_pct": lab_result["error_pct"],
        "kill9_trials": kill9["kill9_trials"],
        "bytes_lost": kill9["bytes_lost"],
        "lab": lab_result,
        "kill9": {k: v for k, v in kill9.items() if k != "kill_delays_s"},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print only the JSON object")
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--packets", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=None)
    sub = parser.add_subparsers(dest="command")
    c = sub.add_parser("child", help="(harness) meter a counter file until killed")
    c.add_argument("--db", type=Path, required=True)
    c.add_argument("--counters", type=Path, required=True)
    c.add_argument("--ready", type=Path, required=True)
    c.add_argument("--poll-s", type=float, default=0.02)
    c.add_argument("--persist-s", type=float, default=0.25)
    e = sub.add_parser("udp-echo", help="(lab) echo UDP datagrams back to their sender")
    e.add_argument("--bind", type=_endpoint, required=True)
    e.add_argument("--ready", type=Path, required=True)
    s = sub.add_parser("udp-send", help="(lab) send datagrams of random sizes, count echoes")
    s.add_argument("--to", type=_endpoint, required=True)
    s.add_argument("--count", type=int, default=1000)
    s.add_argument("--seed", type=int, default=1)
    s.add_argument("--pps", type=int, default=5000)
    args = parser.parse_args(argv)
    if args.command == "child":
        asyncio.run(_child(args.db, args.counters, args.ready, args.poll_s, args.persist_s))
        return 0
    if args.command == "udp-echo":
        udp_echo(args.bind, args.ready)
        return 0
    if args.command == "udp-send":
        print(json.dumps(udp_send(args.to, args.count, args.seed, args.pps)))
        return 0
    if os.geteuid() != 0:
        print("hil.bench.meter: needs root (the lab builds network namespaces); run it with "
              "sudo.", file=sys.stderr)
        return 2
    result = run(args.trials, args.packets, args.seed, progress=not args.json)
    if args.json:  # exactly the three figures; the details without --json
        print(json.dumps({k: result[k] for k in ("error_pct", "kill9_trials", "bytes_lost")}))
    else:
        print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
