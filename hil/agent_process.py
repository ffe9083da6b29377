"""Runs the real agent (`cpe-agent run`) inside the lab's CPE namespace.

Used by the end-to-end tests, the demo and the benchmarks alike, so all three
exercise the same process a site runs. Overrides (shortened dwell, state directory)
go through the documented `CPE_AGENT_*` environment variables.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CPE_AGENT = ROOT / ".venv" / "bin" / "cpe-agent"


class AgentProcess:
    def __init__(
        self,
        namespace: str,
        config_path: Path,
        work_dir: Path,
        overrides: dict[str, str] | None = None,
        log_path: Path | None = None,
    ) -> None:
        self.namespace = namespace
        self.config_path = config_path
        self.state_dir = work_dir / "state"
        self.runtime_dir = work_dir / "run"
        self.log_path = log_path or work_dir / "agent.log"
        self.overrides = overrides or {}
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.runtime_dir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env.update(
            {
                "CPE_AGENT_AGENT__STATE_DIR": str(self.state_dir),
                "CPE_AGENT_AGENT__RUNTIME_DIR": str(self.runtime_dir),
                **self.overrides,
            }
        )
        executable = str(CPE_AGENT) if CPE_AGENT.exists() else "cpe-agent"
        argv = ["ip", "netns", "exec", self.namespace, executable, "run"]
        argv += ["--config", str(self.config_path)]
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(argv, env=env, stdout=log, stderr=log, cwd=ROOT)
        log.close()

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 10.0) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        return self.process.returncode

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def status(self) -> dict[str, Any] | None:
        try:
            return dict(json.loads((self.runtime_dir / "status.json").read_text()))
        except (OSError, ValueError):
            return None

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        """Events from the agent's own SQLite store (read-only; WAL allows a reader)."""
        db_path = self.state_dir / "agent.db"
        if not db_path.exists():
            return []
        db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=5)
        try:
            rows = db.execute("SELECT seq, kind, wall_time_s, data FROM events ORDER BY seq")
            events = [
                {"seq": seq, "kind": k, "wall_time_s": wall, "data": json.loads(data)}
                for seq, k, wall, data in rows
            ]
        except sqlite3.Error:
            return []
        finally:
            db.close()
        return [e for e in events if kind is None or e["kind"] == kind]

    def wait_for(
        self, predicate: Callable[[dict[str, Any]], bool], timeout_s: float, what: str
    ) -> dict[str, Any]:
        """Poll the status file until `predicate(status)` holds, with a deadline."""
        deadline = time.monotonic() + timeout_s
        last: dict[str, Any] | None = None
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(
                    f"the agent exited while waiting for {what}; log:\n{self.log_tail()}"
                )
            last = self.status()
            if last is not None and predicate(last):
                return last
            time.sleep(0.05)
        raise TimeoutError(f"timed out after {timeout_s} s waiting for {what}; last status {last}")

    def wait_mode(self, mode: str, timeout_s: float) -> dict[str, Any]:
        return self.wait_for(lambda s: s.get("mode") == mode, timeout_s, f"mode {mode}")

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def main() -> int:  # a tiny manual entry point: python -m hil.agent_process NS CONFIG DIR
    namespace, config, work = sys.argv[1:4]
    agent = AgentProcess(namespace, Path(config), Path(work))
    agent.start()
    try:
        agent.wait_for(lambda s: True, 30, "first status")
        print(json.dumps(agent.status(), indent=2))
    finally:
        agent.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
