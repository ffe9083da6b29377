"""The lab's daemons: pid files that survive a crash, and stopping processes safely.

A pid file holds the pid and the process's start time (from /proc), so a later `down`
never signals an unrelated process that happens to reuse the pid.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class PidRecord:
    name: str
    pid: int
    start_ticks: int


def start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot, or None if it is gone/zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 2 (comm) may contain spaces and parentheses: split after the last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] == "Z":
        return None
    return int(fields[19])


def write_pidfile(pid_dir: Path, name: str, pid: int) -> PidRecord:
    ticks = start_ticks(pid)
    record = PidRecord(name, pid, ticks if ticks is not None else -1)
    pid_dir.mkdir(parents=True, exist_ok=True)
    (pid_dir / f"{name}.pid").write_text(f"{pid} {record.start_ticks}\n")
    return record


def read_pidfiles(pid_dir: Path) -> list[PidRecord]:
    records: list[PidRecord] = []
    if not pid_dir.is_dir():
        return records
    for path in sorted(pid_dir.glob("*.pid")):
        try:
            pid_text, ticks_text = path.read_text().split()
            records.append(PidRecord(path.stem, int(pid_text), int(ticks_text)))
        except (OSError, ValueError):
            continue
    return records


def is_alive(record: PidRecord) -> bool:
    return start_ticks(record.pid) == record.start_ticks


def terminate(pids: list[int], *, grace_s: float = 2.0, group: bool = False) -> None:
    """SIGTERM, wait up to `grace_s` for them to go, then SIGKILL what is left.

    `group` signals each pid's process group (the lab starts daemons in their own
    session, so the group is exactly the daemon and its children).
    """
    live: dict[int, int] = {}
    for pid in pids:
        ticks = start_ticks(pid)
        if ticks is not None:
            live[pid] = ticks
    if not live:
        return
    _signal_all(live, signal.SIGTERM, group)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        live = {pid: ticks for pid, ticks in live.items() if start_ticks(pid) == ticks}
        if not live:
            return
        time.sleep(0.02)
    _signal_all(live, signal.SIGKILL, group)
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline and any(start_ticks(p) == k for p, k in live.items()):
        time.sleep(0.02)


def _signal_all(live: dict[int, int], sig: signal.Signals, group: bool) -> None:
    for pid in live:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if group and os.getpgid(pid) == pid:
                os.killpg(pid, sig)
            else:
                os.kill(pid, sig)
