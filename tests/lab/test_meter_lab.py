"""The meter in the virtual lab: a known amount of traffic through lte0, metered by the
real Meter through the real Linux driver, within 0.1 % of the kernel's IP byte count
(an nftables counter on iifname/oifname lte0 in the CPE's namespace)."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from hil.bench.meter import TRUTH_TABLE, measure_lab_error
from hil.lab import Lab
from hil.lab import topology as t

pytestmark = [
    pytest.mark.root,
    pytest.mark.lab,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: builds network namespaces"),
]

PREFIX = f"cpt{os.getpid()}m-"


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    _sweep_meter_labs_of_dead_sessions()
    the_lab = Lab(prefix=PREFIX)
    try:
        the_lab.up()
        yield the_lab
    finally:
        the_lab.down()


def _sweep_meter_labs_of_dead_sessions() -> None:
    """Remove `cpt<pid>m-` labs whose test session was killed (its pid is gone)."""
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                             check=False)
    stale: set[str] = set()
    for line in listing.stdout.splitlines():
        match = re.fullmatch(r"(cpt(\d+)m-)([a-z]+)", line.split()[0]) if line.strip() else None
        if match and match.group(3) in t.NODES and not os.path.exists(f"/proc/{match.group(2)}"):
            stale.add(match.group(1))
    for prefix in stale:
        Lab(prefix=prefix).down()


def test_metered_ip_bytes_match_the_kernel_within_a_tenth_of_a_percent(lab, tmp_path: Path):
    result = asyncio.run(measure_lab_error(lab, tmp_path, packets=20_000, seed=7))
    assert result["packets_echoed"] >= 0.99 * result["packets_sent"], result
    # ~30 MB of IP both ways: enough that 0.1 % is 30 kB, far above a stray ARP.
    assert result["kernel_ip_bytes"] > 20_000_000, result
    assert result["counts_frames"] is True  # veth: the frame header was subtracted
    assert abs(result["error_pct"]) <= 0.1, result
    # Cleaned up: no policy, no switch, no truth counters left in the CPE.
    ruleset = lab.exec("cpe", ["nft", "list", "tables"], check=True).stdout
    assert "cpe_agent" not in ruleset and TRUTH_TABLE not in ruleset
    rules = lab.exec("cpe", ["ip", "rule"], check=True).stdout
    assert "4241" not in rules
