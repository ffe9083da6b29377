"""A voice path in the lab: the phone's 50 packet/s RTP-like stream to the SBC, the
SBC's sink, and the agent; used by the failover benchmark, the demo and the e2e test.

The outage is measured where it matters, at the SBC: the gap between the last packet
that came via the primary and the first that came via LTE.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from hil.agent_process import AgentProcess
from hil.lab import Lab
from hil.lab import topology as t
from hil.sims.rtp_stream import Arrival, read_arrivals, voice_path_gaps

PRIMARY_SOURCE = t.PRIMARY_PUBLIC_ADDRESS
CELLULAR_SOURCE = t.CELLULAR_PUBLIC_ADDRESS

#: Lab timings: fast probes as in the lab config, a short dwell so trials are quick, and
#: no flap damping: back-to-back trials are flaps by design, and damping would double
#: the dwell of each trial (3, 6, 12, 24 s ...); damping has its own tests.
BENCH_OVERRIDES = {
    "CPE_AGENT_FAILOVER__DWELL_S": "3",
    "CPE_AGENT_FAILOVER__FLAP_WINDOW_S": "0",
    "CPE_AGENT_HEALTH__CELLULAR_ACTIVE_INTERVAL_S": "0.5",
    "CPE_AGENT_HEALTH__CELLULAR_IDLE_INTERVAL_S": "5",
}


class VoicePath:
    def __init__(self, lab: Lab, work_dir: Path, overrides: dict[str, str] | None = None):
        self.lab = lab
        self.work_dir = work_dir
        self.arrivals_path = work_dir / "arrivals.jsonl"
        self.agent = AgentProcess(
            lab.ns("cpe"),
            lab.config_path,
            work_dir / "agent",
            overrides={**BENCH_OVERRIDES, **(overrides or {})},
        )

    def start(self, *, stream: bool = True) -> None:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.agent.start()
        self.agent.wait_for(
            lambda s: s["mode"] == "PRIMARY" and s["links"]["primary"]["verdict"] == "up",
            30,
            "the agent to see a healthy primary",
        )
        if stream:
            self.start_stream()

    def start_stream(self) -> None:
        ready = self.work_dir / "sink.ready"
        ready.unlink(missing_ok=True)
        self.lab.spawn(
            "sbc",
            Lab.python(
                "hil.sims.rtp_stream",
                "sink",
                "--out",
                str(self.arrivals_path),
                "--ready-file",
                str(ready),
            ),
            name="rtp-sink",
        )
        wait_until(ready.exists, 10, "the RTP sink to listen")
        self.lab.spawn("phone", Lab.python("hil.sims.rtp_stream", "send"), name="rtp-send")
        wait_until(lambda: self.last_source() == PRIMARY_SOURCE, 10, "RTP via the primary")

    def stop(self) -> None:
        self.agent.stop()
        for name in ("rtp-send", "rtp-sink"):
            self.lab.stop(name)

    def arrivals(self, since_line: int = 0) -> list[Arrival]:
        try:
            lines = self.arrivals_path.read_text().splitlines()[since_line:]
        except OSError:
            return []
        complete = [line for line in lines if line.endswith("}")]
        return read_arrivals(complete)

    def line_count(self) -> int:
        try:
            return len(self.arrivals_path.read_text().splitlines())
        except OSError:
            return 0

    def last_source(self) -> str | None:
        recent = self.arrivals(max(0, self.line_count() - 5))
        return recent[-1].source if recent else None

    def measure_switch(self, impair: tuple[str, ...], clear: str) -> dict[str, Any]:
        """Impair the primary, wait for VoIP to arrive via LTE, restore, wait for failback."""
        self.agent.wait_mode("PRIMARY", 60)
        wait_until(lambda: self.last_source() == PRIMARY_SOURCE, 15, "RTP via the primary")
        failbacks = len(self.agent.events("failback"))
        start_line = self.line_count()
        self.lab.impair("primary", *impair)
        wait_until(lambda: self.last_source() == CELLULAR_SOURCE, 30, "RTP via LTE")
        # From 2 s before the cut: the last packet via the primary came before it.
        window = self.arrivals(max(0, start_line - 100))
        gaps = voice_path_gaps(window, PRIMARY_SOURCE, CELLULAR_SOURCE)
        self.lab.impair("primary", clear)
        # Wait for the failback event itself: a status file read just now may predate it.
        wait_until(lambda: len(self.agent.events("failback")) > failbacks, 90, "the failback")
        wait_until(lambda: self.last_source() == PRIMARY_SOURCE, 15, "RTP back via the primary")
        return {"failover_gap_s": gaps.failover_gap_s, "lost_packets": gaps.lost}


def wait_until(predicate: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise TimeoutError(f"timed out after {timeout_s} s waiting for {what}")
