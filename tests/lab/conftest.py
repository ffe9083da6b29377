"""Fixtures for the lab's own tests: one lab per test session, on a prefix of its own
(`cpt<pid>-`), so a demo lab running under `cpl-` is never disturbed."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator

import pytest

from hil.lab import Lab
from hil.lab import topology as t

NOT_ROOT = os.geteuid() != 0
NOT_ROOT_REASON = "needs root: the lab builds network namespaces (CI runs these as root)"


@pytest.fixture(scope="session")
def lab() -> Iterator[Lab]:
    if NOT_ROOT:
        pytest.skip(NOT_ROOT_REASON)
    _sweep_labs_of_dead_sessions()
    the_lab = Lab(prefix=f"cpt{os.getpid()}-")
    try:
        the_lab.up()
        yield the_lab
    finally:
        the_lab.down()


@pytest.fixture
def clean_lab(lab: Lab) -> Iterator[Lab]:
    """The session lab, with every impairment cleared after the test (and before)."""
    _clear(lab)
    yield lab
    _clear(lab)


def _clear(lab: Lab) -> None:
    lab.impair("primary", "clear")
    lab.impair("cellular", "clear")
    lab.impair("target", "clear")



def _sweep_labs_of_dead_sessions() -> None:
    """Remove labs left by test sessions that were killed (their pid is gone)."""
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False)
    stale: set[str] = set()
    for line in listing.stdout.splitlines():
        match = re.fullmatch(r"(cpt(\d+)[de]?-)([a-z]+)", line.split()[0]) if line.strip() else None
        if match and match.group(3) in t.NODES and not os.path.exists(f"/proc/{match.group(2)}"):
            stale.add(match.group(1))
    for prefix in stale:
        Lab(prefix=prefix).down()
