"""Failover benchmark: the voice-path outage at the SBC, in the virtual lab.

    python -m hil.bench.failover --json [--trials 10] [--noisy-minutes 10]

Runs `--trials` trials each of a silent upstream blackhole (the ISP drops everything,
the CPE's link stays up) and of carrier loss (the ISP-side port goes down), measuring
the gap at the SBC between the last RTP-like packet of the phone's 50 packet/s stream
via the primary and the first via LTE. Then runs the agent for `--noisy-minutes` on a
healthy-but-noisy primary (3 % random loss, one of three SBC targets dead) and counts
failovers, which should be none. Prints one JSON object.

For scale: pfSense dpinger defaults ~15 s, MikroTik check-gateway 10-20 s, mwan3
defaults 40-130 s; providers tell customers phones need 1-3 minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from hil.bench.voice_path import VoicePath
from hil.lab import Lab
from hil.lab import topology as t

DEAD_TARGET = t.SBC_ADDRESSES.get("sbc-central", "203.0.113.12")


def summary(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"median": None, "p90": None, "max": None}
    ordered = sorted(values)
    p90 = ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]
    return {
        "median": round(statistics.median(ordered), 3),
        "p90": round(p90, 3),
        "max": round(ordered[-1], 3),
    }


def run(trials: int, noisy_minutes: float, progress: bool) -> dict[str, Any]:
    def say(text: str) -> None:
        if progress:
            print(text, file=sys.stderr, flush=True)

    results: dict[str, list[float]] = {"silent_blackhole_s": [], "carrier_loss_s": []}
    with tempfile.TemporaryDirectory(prefix="cpe-bench-") as tmp, Lab(prefix="cpb-") as lab:
        path = VoicePath(lab, Path(tmp))
        path.start()
        try:
            for i in range(trials):
                for name, impair, clear in (
                    ("silent_blackhole_s", ("blackhole",), "clear"),
                    ("carrier_loss_s", ("down",), "up"),
                ):
                    m = path.measure_switch(impair, clear)
                    gap = m["failover_gap_s"]
                    if gap is None:
                        raise RuntimeError(f"{name} trial {i + 1}: VoIP never switched paths")
                    results[name].append(gap)
                    say(f"trial {i + 1}/{trials} {name[:-2]}: {gap:.3f} s")
            failovers_before = len(path.agent.events("failover"))
            noisy_s = noisy_minutes * 60
            if noisy_s > 0:
                say(f"noisy primary for {noisy_minutes} min (3 % loss, {DEAD_TARGET} dead)")
                path.agent.wait_mode("PRIMARY", 60)
                lab.impair("primary", "loss", 3)
                lab.impair("target", "dead", DEAD_TARGET)
                deadline = time.monotonic() + noisy_s
                while time.monotonic() < deadline:
                    if not path.agent.alive():
                        raise RuntimeError("the agent died during the noisy run")
                    time.sleep(1.0)
                lab.impair("primary", "clear")
                lab.impair("target", "clear")
            noisy_failovers = path.agent.events("failover")[failovers_before:]
            false_failovers = len(noisy_failovers)
            # Why, for the engineer reading the figure: the primary's reason at the time.
            false_reasons = [
                f"{e['data'].get('reason')}: {e['data'].get('primary', {}).get('reason')}"
                for e in noisy_failovers
            ]
        finally:
            path.stop()
    return {
        "silent_blackhole_s": summary(results["silent_blackhole_s"]),
        "carrier_loss_s": summary(results["carrier_loss_s"]),
        "false_failovers": false_failovers,
        "false_failover_reasons": false_reasons,
        "noisy_minutes": noisy_minutes,
        "trials": trials,
        "samples": {k: [round(v, 3) for v in vs] for k, vs in results.items()},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print only the JSON object")
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--noisy-minutes", type=float, default=10.0)
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print(
            "hil.bench.failover: needs root (it builds network namespaces); run it with sudo.",
            file=sys.stderr,
        )
        return 2
    result = run(args.trials, args.noisy_minutes, progress=not args.json)
    print(json.dumps(result, indent=None if args.json else 2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
