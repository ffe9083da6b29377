"""RouterOS driver benchmark: API round trips and seconds against the simulator.

    python -m hil.bench.routeros --json [--runs 7] [--profiles 6.49,7.17,7.18] [--rig]

For each RouterOS profile, on a fresh simulated RB2011 (loopback, no added latency):

- `full_apply`: apply_policy on a router without the agent's config (reads, adds,
  read-back);
- `reapply`: apply_policy again (nothing to change: reads only, the drift check);
- `switch`: set_voip_path(CELLULAR) alone (one `set`, one read-back);
- `failover` / `failback`: what the failover controller does per transition: the switch,
  read_state (its verification) and the conntrack flush, with one SIP and one RTP entry.

Round trips are API commands the driver sent (each one request and its reply); the
median of `--runs` fresh routers is reported. On a real LAN multiply the round trips by
the router's reply time (about 1-5 ms per command on an RB2011 is a guess to be checked
on a rig: hil/rigs/README.md).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from drivers.router.routeros.driver import RouterOSDriver
from drivers.types import VoipPath, VoipPolicy
from hil.sims.routeros import RouterOSSim

USER, PASSWORD = "bench", "bench-secret"
SBC = "203.0.113.10"
POLICY = VoipPolicy(
    primary_interface="ether1",
    cellular_interface="ether10",
    cellular_gateway="192.168.5.1",
    lan_interfaces=("bridge",),
    voip_prefixes=(f"{SBC}/32", "203.0.113.96/28"),
    agent_prefixes=("203.0.113.53/32",),
    cellular_probe_port=5099,
    primary_probe_port=5098,
)
STEPS = ("full_apply", "reapply", "switch", "failover", "failback")


async def _measure(driver: RouterOSDriver, action: Callable[[], Awaitable[Any]]
                   ) -> tuple[int, float]:
    before = driver.round_trips
    started = time.perf_counter()
    await action()
    return driver.round_trips - before, time.perf_counter() - started


async def measure_all(driver: RouterOSDriver, policy: VoipPolicy,
                      add_flows: Callable[[], None] | None) -> dict[str, tuple[int, float]]:
    """The five steps on a router that holds none of the agent's config yet."""
    out: dict[str, tuple[int, float]] = {}
    out["full_apply"] = await _measure(driver, lambda: driver.apply_policy(policy))
    out["reapply"] = await _measure(driver, lambda: driver.apply_policy(policy))
    out["switch"] = await _measure(driver, lambda: driver.set_voip_path(VoipPath.CELLULAR))
    await driver.set_voip_path(VoipPath.PRIMARY)

    async def transition(path: VoipPath) -> None:
        if add_flows is not None:
            add_flows()
        await driver.set_voip_path(path)
        state = await driver.read_state()
        assert state.voip_path is path
        flushed = await driver.flush_voip_conntrack()
        assert add_flows is None or flushed == 2

    out["failover"] = await _measure(driver, lambda: transition(VoipPath.CELLULAR))
    out["failback"] = await _measure(driver, lambda: transition(VoipPath.PRIMARY))
    return out


async def one_run(profile: str) -> dict[str, tuple[int, float]]:
    with RouterOSSim(profile=profile, model="RB2011", user=USER, password=PASSWORD) as sim:
        host, port = sim.address
        driver = RouterOSDriver(host=host, port=port, username=USER, password=PASSWORD,
                                plain_api=True, timeout_s=5.0)

        def add_flows() -> None:
            sim.add_connection("192.168.88.10:5060", f"{SBC}:5060")
            sim.add_connection("192.168.88.10:40002", f"{SBC}:10002")

        await driver.open()
        try:
            return await measure_all(driver, POLICY, add_flows)
        finally:
            await driver.close()


async def one_rig_run() -> dict[str, tuple[int, float]]:
    """The same on the real router named by CPE_RIG_ROUTEROS_* (hil/rigs/README.md); the
    agent's items are removed before and after."""
    from hil.rigs.routeros import from_env

    rig, reason = from_env()
    if rig is None:
        raise SystemExit(reason)
    driver = RouterOSDriver(**rig.driver_options())
    await driver.open()
    try:
        await driver.remove_all()
        return await measure_all(driver, rig.policy(), None)
    finally:
        await driver.remove_all()
        await driver.close()


def _median(samples: list[dict[str, tuple[int, float]]]) -> dict[str, Any]:
    return {
        step: {
            "round_trips": int(statistics.median(s[step][0] for s in samples)),
            "seconds": round(statistics.median(s[step][1] for s in samples), 4),
        }
        for step in STEPS
    }


def run(profiles: list[str], runs: int, rig: bool = False) -> dict[str, Any]:
    if rig:
        samples = [asyncio.run(one_rig_run()) for _ in range(runs)]
        return {"runs": runs, "router": "rig (CPE_RIG_ROUTEROS_HOST)",
                "profiles": {"rig": _median(samples)}}
    results = {p: _median([asyncio.run(one_run(p)) for _ in range(runs)]) for p in profiles}
    return {"runs": runs, "router": "simulated RB2011 on loopback", "profiles": results}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--profiles", default="6.49,7.17,7.18")
    parser.add_argument("--rig", action="store_true",
                        help="measure the real router named by CPE_RIG_ROUTEROS_* instead")
    args = parser.parse_args(argv)
    figures = run([p for p in args.profiles.split(",") if p], max(1, args.runs), args.rig)
    if args.json:
        print(json.dumps(figures))
        return 0
    print(f"{'profile':8} {'step':11} {'round trips':>11} {'seconds':>9}")
    for profile, steps in figures["profiles"].items():
        for step, value in steps.items():
            print(f"{profile:8} {step:11} {value['round_trips']:>11} {value['seconds']:>9.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
