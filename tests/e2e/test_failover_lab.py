"""End to end in the virtual lab: the real agent process, real kernel forwarding, real
SIP (sipp SBCs) and a 50 packet/s RTP-like stream from the phone.

Each test ends by showing recovery: VoIP back on the primary.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from hil.agent_process import CPE_AGENT
from hil.bench.voice_path import CELLULAR_SOURCE, PRIMARY_SOURCE, VoicePath, wait_until
from hil.lab import Lab

pytestmark = [
    pytest.mark.root,
    pytest.mark.lab,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: builds network namespaces"),
]

SBC = "203.0.113.10"
WEB = "http://203.0.113.80/"


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    the_lab = Lab(prefix=f"cpt{os.getpid()}e-")
    try:
        the_lab.up()
        yield the_lab
    finally:
        the_lab.down()


@pytest.fixture
def voice(lab: Lab, tmp_path: Path) -> Iterator[VoicePath]:
    for link in ("primary", "cellular"):
        lab.impair(link, "clear")
    path = VoicePath(lab, tmp_path)
    path.start()
    try:
        yield path
    finally:
        path.stop()
        lab.impair("primary", "clear")
        lab.impair("primary", "up")


def test_silent_blackhole_moves_voip_to_lte_and_back(lab: Lab, voice: VoicePath):
    assert lab.sip_options("phone", SBC)["answered"]
    failbacks = len(voice.agent.events("failback"))

    lab.impair("primary", "blackhole")
    wait_until(lambda: voice.last_source() == CELLULAR_SOURCE, 20, "RTP via LTE")
    status = voice.agent.wait_mode("CELLULAR", 10)
    assert status["voip_path"] == "cellular"
    assert status["links"]["primary"]["verdict"] == "down"
    # Real SIP from the phone crosses LTE (the primary is a blackhole) and is answered.
    assert lab.sip_options("phone", SBC, timeout_s=2.0)["answered"]
    # The LAN PC's web traffic is not moved to LTE: with the primary dead it has no way out.
    assert lab.http_get("pc", WEB, timeout_s=1.0) is None
    failover = voice.agent.events("failover")[-1]["data"]
    assert failover["reason"] == "primary down"

    lab.impair("primary", "clear")
    wait_until(lambda: len(voice.agent.events("failback")) > failbacks, 60, "the failback")
    wait_until(lambda: voice.last_source() == PRIMARY_SOURCE, 15, "RTP via the primary")
    assert lab.http_get("pc", WEB) == 200
    gaps = voice.arrivals()
    assert {a.source for a in gaps} == {PRIMARY_SOURCE, CELLULAR_SOURCE}


def test_carrier_loss_blocks_non_voip_on_lte_even_with_a_customer_fallback_route(
    lab: Lab, voice: VoicePath
):
    """A customer's own backup default route via LTE must not carry data: the agent drops
    and counts non-VoIP forwarded out of LTE, while VoIP uses it."""
    cpe = lab.ns("cpe")
    subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            cpe,
            "sysctl",
            "-qw",
            "net.ipv4.conf.all.ignore_routes_with_linkdown=1",
        ],
        check=True,
    )
    subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            cpe,
            "ip",
            "route",
            "add",
            "default",
            "via",
            "100.64.100.1",
            "dev",
            "lte0",
            "metric",
            "500",
        ],
        check=True,
    )
    try:
        lab.impair("primary", "down")
        wait_until(lambda: voice.last_source() == CELLULAR_SOURCE, 20, "RTP via LTE")
        voice.agent.wait_mode("CELLULAR", 10)
        assert lab.http_get("pc", WEB, timeout_s=1.0) is None  # blocked on LTE, not NATed out
        status = voice.agent.wait_for(
            lambda s: s.get("router", {}).get("blocked_packets", 0) > 0,
            15,
            "the blocked counter to show the PC's packets",
        )
        assert status["router"]["in_sync"]
    finally:
        lab.impair("primary", "up")
        subprocess.run(
            [
                "ip",
                "netns",
                "exec",
                cpe,
                "ip",
                "route",
                "del",
                "default",
                "via",
                "100.64.100.1",
                "dev",
                "lte0",
                "metric",
                "500",
            ],
            check=False,
        )
    wait_until(lambda: voice.last_source() == PRIMARY_SOURCE, 60, "RTP back via the primary")
    assert lab.http_get("pc", WEB) == 200


def test_agent_restart_resumes_failover_mode_and_reapplies_it(lab: Lab, voice: VoicePath):
    """Power loss in failover: the agent comes back in CELLULAR and VoIP stays on LTE."""
    lab.impair("primary", "blackhole")
    wait_until(lambda: voice.last_source() == CELLULAR_SOURCE, 20, "RTP via LTE")
    voice.agent.stop()
    # What a reboot does to the router's state: the switch rule is gone.
    subprocess.run(
        ["ip", "netns", "exec", lab.ns("cpe"), "ip", "rule", "del", "priority", "4240"],
        check=False,
    )
    restart_line = voice.line_count()
    voice.agent.start()
    status = voice.agent.wait_for(
        lambda s: s["mode"] == "CELLULAR" and s["voip_path"] == "cellular", 20, "resumed CELLULAR"
    )
    assert status["mode"] == "CELLULAR"
    # New packets arrive (the primary is a blackhole, so only via a re-applied LTE path).
    wait_until(
        lambda: len([a for a in voice.arrivals(restart_line) if a.source == CELLULAR_SOURCE]) > 25,
        20,
        "RTP via LTE after the restart",
    )
    lab.impair("primary", "clear")
    wait_until(lambda: voice.last_source() == PRIMARY_SOURCE, 60, "RTP back via the primary")


def test_status_json_inside_the_cpe_namespace_then_remove_cleans_the_router(
    lab: Lab, voice: VoicePath
):
    env = {
        "CPE_AGENT_AGENT__RUNTIME_DIR": str(voice.agent.runtime_dir),
        "CPE_AGENT_AGENT__STATE_DIR": str(voice.agent.state_dir),
    }
    cli = [str(CPE_AGENT), "status", "--json", "--config", str(lab.config_path)]
    result = lab.exec("cpe", cli, env={**os.environ, **env})
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    assert status["mode"] == "PRIMARY"
    assert status["links"]["primary"]["verdict"] == "up"
    assert status["router"]["in_sync"] is True

    voice.agent.stop()
    remove = [str(CPE_AGENT), "remove", "--json", "--config", str(lab.config_path)]
    result = lab.exec("cpe", remove, env={**os.environ, **env})
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["removed"] >= 3
    assert lab.exec("cpe", ["nft", "list", "table", "inet", "cpe_agent"]).returncode != 0
    rules = lab.exec("cpe", ["ip", "rule"]).stdout
    assert "lookup 4241" not in rules
    # The customer's own NAT is untouched, and the PC still browses via the primary.
    assert lab.exec("cpe", ["nft", "list", "table", "ip", "customer_nat"]).returncode == 0
    assert lab.http_get("pc", WEB) == 200
    # A stopped agent leaves no status behind: `status` says it is not running, exit 3.
    result = lab.exec("cpe", cli, env={**os.environ, **env})
    assert result.returncode == 3
    assert "not running" in json.loads(result.stdout)["problems"][0]
