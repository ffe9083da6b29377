"""One agent per state directory: two would fight over the router and the meter.

An exclusive `flock` on `<state_dir>/agent.lock`, held while the agent runs; the
kernel drops it when the process dies, so a crash never leaves a stale lock.
`cpe-agent failover-test` uses it to tell whether an agent runs (then it asks that
agent) or not (then it runs the test in-process).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

LOCK_FILE = "agent.lock"


class AlreadyRunningError(Exception):
    """Another agent holds the lock; the message is the sentence a person sees."""


@contextlib.contextmanager
def instance_lock(state_dir: Path) -> Iterator[None]:
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        if not _take(fd):
            raise AlreadyRunningError(
                f"another cpe-agent is running with the state directory {state_dir}; "
                "stop it first (systemctl stop cpe-agent) or use its own commands"
            )
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        os.close(fd)


def agent_running(state_dir: Path) -> bool:
    """True when an agent holds the lock for this state directory."""
    path = state_dir / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        return not _take(fd)  # closing the descriptor releases a lock taken here
    finally:
        os.close(fd)


def _take(fd: int) -> bool:
    """Try the exclusive lock without waiting; False when another process holds it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True
