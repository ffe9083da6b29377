"""Installer test benchmark: how long `cpe-agent failover-test` takes, what it costs in
LTE bytes, and how close its capacity estimate comes to a known bottleneck.

    python -m hil.bench.installer --json [--trials 5] [--rates 1000,5000]

Runs in its own virtual lab (`hil.lab`, prefix cpb-), the command exactly as an
installer runs it in the CPE's namespace (no agent running: the test runs in-process).

- duration_s, switch_ms, failback_ms, lte_test_bytes, lte_interface_bytes: medians over
  `--trials` runs on an unshaped lab (LTE is a veth: the figures are the agent's, not
  a radio's).
- capacity: for each rate R (kbit/s) the LTE link is shaped with the lab's token bucket
  (`impair cellular rate R`) and the test's capacity figure is compared with R:
  ratio = measured / R, median over the trials (1.0 is exact; the method reads the
  round trip's bottleneck, so the shaper is what it should find).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from typing import Any

from hil.agent_process import CPE_AGENT
from hil.lab import Lab
from hil.lab import topology as t


def run_test(lab: Lab) -> dict[str, Any]:
    done = lab.exec(t.CPE, [str(CPE_AGENT), "failover-test", "--json", "--config",
                            str(lab.config_path)], timeout=180)
    if not done.stdout.strip():
        raise RuntimeError(f"failover-test printed nothing: {done.stderr.strip()}")
    return dict(json.loads(done.stdout))


def step(report: dict[str, Any], name: str) -> dict[str, Any]:
    return next(s for s in report["steps"] if s["name"] == name)


def measure(trials: int, rates_kbps: list[float]) -> dict[str, Any]:
    lab = Lab(prefix="cpb-")
    try:
        lab.up()
        lab.exec(t.CPE, [str(CPE_AGENT), "location", "record", "--samples", "1",
                         "--interval-s", "0", "--config", str(lab.config_path)], timeout=60)
        runs = [run_test(lab) for _ in range(trials)]
        verdicts = sorted({r["verdict"] for r in runs})
        figures: dict[str, Any] = {
            "trials": trials,
            "verdicts": verdicts,
            "duration_s": statistics.median(r["duration_s"] for r in runs),
            "switch_ms": round(statistics.median(
                step(r, "switch_to_lte")["figures"]["switch_ms"] for r in runs), 1),
            "failback_ms": round(statistics.median(
                step(r, "failback")["figures"]["switch_ms"] for r in runs), 1),
            "lte_test_bytes": statistics.median(r["lte_test_bytes"] for r in runs),
            "lte_interface_bytes": statistics.median(
                r["lte_interface_bytes"] or 0 for r in runs),
            "max_lte_bytes": runs[0]["max_lte_bytes"],
            "capacity": {},
        }
        for rate in rates_kbps:
            lab.impair("cellular", "rate", rate)
            measured = [step(run_test(lab), "capacity_lte")["figures"].get("rate_kbps")
                        for _ in range(trials)]
            found = [m for m in measured if m]
            figures["capacity"][str(int(rate))] = {
                "measured_kbps_median": statistics.median(found) if found else None,
                "ratio": round(statistics.median(found) / rate, 3) if found else None,
                "runs": len(measured),
            }
            lab.impair("cellular", "clear")
        return figures
    finally:
        lab.down()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hil.bench.installer",
                                     description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--json", action="store_true", help="one JSON object")
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--rates", default="1000,5000", help="kbit/s, comma separated")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("hil.bench.installer: needs root (it builds network namespaces); run it "
              "with sudo.", file=sys.stderr)
        return 2
    rates = [float(r) for r in args.rates.split(",") if r]
    try:
        figures = measure(args.trials, rates)
    except (RuntimeError, subprocess.SubprocessError) as exc:
        print(f"hil.bench.installer: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(figures))
    else:
        for key, value in figures.items():
            print(f"{key}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
