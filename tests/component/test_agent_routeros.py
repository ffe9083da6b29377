"""The whole agent (`run_agent`) beside a MikroTik: the RouterOS API simulator stands in
for the router, the router's own `/ping` measures each link, and a dead primary moves
VoIP to LTE and back. No packet leaves this machine: pings are answered by the
simulator, and the SIP probes go to a loopback SBC address."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from agent.app import run_agent
from agent.config import load_settings
from drivers.router.routeros import commands as c
from hil.sims.routeros import RouterOSSim

USER, PASSWORD = "cpe-agent", "s3cret-for-tests"
SBC = "127.0.0.2"  # loopback: the agent's SIP probes never leave the machine

CONFIG = """
[agent]
device_id = "ros-site-1"
state_dir = "{state}"
runtime_dir = "{run}"
[router]
driver = "routeros"
host = "{host}"
port = {port}
username = "{user}"
password = "{password}"
plain_api = true
timeout_s = 2.0
[links.primary]
interface = "ether1"
[links.cellular]
interface = "ether10"
gateway = "100.64.100.1"
[voip]
lan_interfaces = ["bridge"]
sbc_addresses = ["{sbc}"]
[health]
primary_interval_s = 0.2
down_after_s = 0.8
cellular_idle_interval_s = 5
cellular_active_interval_s = 0.5
sip_required = false
[failover]
dwell_s = 1
flap_window_s = 0
"""


def status(run_dir: Path) -> dict:
    try:
        return json.loads((run_dir / "status.json").read_text())
    except (OSError, ValueError):
        return {}


async def until(predicate, timeout_s: float, what: str) -> dict:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while asyncio.get_running_loop().time() < deadline:
        found = predicate()
        if found:
            return found
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.parametrize("profile", ["6.49", "7.18"])
async def test_agent_fails_over_and_back_using_the_routers_own_ping(tmp_path, profile):
    with RouterOSSim(profile=profile, model="RB2011", user=USER, password=PASSWORD) as sim:
        host, port = sim.address
        sim.set_ping(SBC, 12.0, routing_table="main")
        sim.set_ping(SBC, 45.0, routing_table=c.TABLE)
        path = tmp_path / "agent.toml"
        run_dir = tmp_path / "run"
        path.write_text(
            CONFIG.format(
                state=tmp_path / "state",
                run=run_dir,
                host=host,
                port=port,
                user=USER,
                password=PASSWORD,
                sbc=SBC,
            )
        )
        stop = asyncio.Event()
        agent = asyncio.create_task(run_agent(load_settings(path), stop=stop))
        try:

            def primary_up() -> dict:
                s = status(run_dir)
                ok = s.get("mode") == "PRIMARY" and s["links"]["primary"]["verdict"] == "up"
                return s if ok else {}

            first = await until(primary_up, 20, "a healthy primary")
            # 12 ms is what the simulated router answers its own /ping with: the agent
            # measured the primary through the router, not from its own sockets.
            assert first["links"]["primary"]["rtt_ms"] == pytest.approx(12.0)
            # The rules are on the router, tagged, with the switch off.
            assert any(
                item.get("comment", "").startswith("cpe-agent:")
                for item in sim.items("/ip/firewall/mangle")
            )
            sim.set_ping(SBC, None, routing_table="main")  # the primary goes silent
            s = await until(
                lambda: (x := status(run_dir)).get("voip_path") == "cellular" and x,
                15,
                "failover",
            )
            assert s["links"]["primary"]["verdict"] == "down"
            assert s["links"]["cellular"]["rtt_ms"] == pytest.approx(45.0)  # LTE's table
            sim.set_ping(SBC, 12.0, routing_table="main")
            await until(
                lambda: (
                    (x := status(run_dir)).get("mode") == "PRIMARY"
                    and x.get("voip_path") == "primary"
                    and x
                ),
                40,
                "failback",
            )
        finally:
            stop.set()
            await asyncio.wait_for(agent, 20)
