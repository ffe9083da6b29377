"""`cpe-agent meter [--json]` and `cpe-agent meter reset --reason TEXT [--yes]`."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

from agent import cli
from agent.clock import ManualClock
from agent.meter.admin import db_path, read_books
from agent.meter.meter import Meter
from agent.status import write_status
from agent.store import Store
from drivers.types import Counters

CONFIG = """
[agent]
device_id = "site-1"
runtime_dir = "{runtime}"
state_dir = "{state}"
[links.primary]
interface = "wan0"
[links.cellular]
interface = "lte0"
[voip]
lan_interfaces = ["lan0"]
sbc_addresses = ["203.0.113.10"]
[plan]
cap_gb = 1.0
timezone = "America/Chicago"
"""


def config(tmp_path: Path) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(CONFIG.format(runtime=tmp_path / "run", state=tmp_path / "state"))
    return path


class Source:
    def __init__(self) -> None:
        self.rx = 0

    async def interface_counters(self, interface: str) -> Counters:
        return Counters(interface, self.rx, 0, 0, 0, "boot-1")


async def meter_some(tmp_path: Path, rx_bytes: int) -> None:
    """What a running agent leaves behind: books with `rx_bytes` counted."""
    from agent.config import load_settings

    settings = load_settings(config(tmp_path))
    store = Store(db_path(settings.agent.state_dir))
    source = Source()
    meter = Meter(source, store, ManualClock(wall_s=time.time()), settings,
                  wall_synced=lambda: None, host_boot_id=lambda: "host-1")
    await meter.poll_once()
    source.rx = rx_bytes
    await meter.poll_once()
    meter.flush()
    meter.close()
    store.close()


def test_meter_before_the_agent_ever_ran_says_so(tmp_path, capsys):
    assert cli.main(["meter", "--config", str(config(tmp_path))]) == cli.EXIT_NEEDS_HUMAN
    err = capsys.readouterr().err.strip()
    assert "the meter has counted nothing yet" in err and "\n" not in err


async def test_meter_reads_the_books_when_the_agent_is_stopped(tmp_path, capsys):
    await meter_some(tmp_path, 600_000_000)
    assert cli.main(["meter", "--config", str(config(tmp_path))]) == cli.EXIT_OK
    out = capsys.readouterr().out
    assert "0.606 GB of 1 GB (60.6 %)" in out  # 1 % safety margin by default
    assert "America/Chicago" in out and "call-minutes left" in out
    assert "the agent is not running" in out
    assert cli.main(["meter", "--json", "--config", str(config(tmp_path))]) == cli.EXIT_OK
    snap = json.loads(capsys.readouterr().out)
    assert snap["ok"] is True and snap["source"] == "stored"
    assert snap["ip_bytes"] == 600_000_000 and snap["cap_bytes"] == 1_000_000_000
    assert snap["minutes_left"] == round((1e9 - 606_000_000) / 1_200_000, 1)
    assert snap["cycle"]["timezone"] == "America/Chicago"


def test_meter_prefers_the_running_agents_live_snapshot(tmp_path, capsys):
    path = config(tmp_path)
    live = {"used_bytes": 123, "percent": 0.0, "counter_source": "linux:lte0"}
    write_status(tmp_path / "run", {"written_wall_s": time.time(), "meter": live})
    assert cli.main(["meter", "--json", "--config", str(path)]) == cli.EXIT_OK
    out = json.loads(capsys.readouterr().out)
    assert out["source"] == "agent" and out["used_bytes"] == 123


async def test_reset_asks_first_and_refuses_without_a_terminal(tmp_path, capsys, monkeypatch):
    await meter_some(tmp_path, 5_000_000)
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    args = ["meter", "reset", "--reason", "SIM swapped", "--config", str(config(tmp_path))]
    assert cli.main(args) == cli.EXIT_CONFIG
    assert "add --yes" in capsys.readouterr().err
    books = read_books(tmp_path / "state" / "agent.db")
    assert books is not None and books.cycle is not None
    assert books.cycle.totals.ip_bytes == 5_000_000


async def test_reset_with_confirmation_in_a_terminal(tmp_path, capsys, monkeypatch):
    await meter_some(tmp_path, 5_000_000)

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr("sys.stdin", Tty("n\n"))
    args = ["meter", "--config", str(config(tmp_path)), "reset", "--reason", "test"]
    assert cli.main(args) == cli.EXIT_CONFIG
    assert "cancelled; nothing was changed" in capsys.readouterr().err
    monkeypatch.setattr("sys.stdin", Tty("y\n"))
    assert cli.main(args) == cli.EXIT_OK
    assert "reason 'test'" in capsys.readouterr().out
    books = read_books(tmp_path / "state" / "agent.db")
    assert books is not None and books.cycle is not None and books.cycle.totals.ip_bytes == 0


async def test_reset_for_scripts_prints_json_and_queues_the_report(tmp_path, capsys):
    await meter_some(tmp_path, 5_000_000)
    args = ["meter", "reset", "--reason", "  carrier   credit ", "--yes", "--json",
            "--config", str(config(tmp_path))]
    assert cli.main(args) == cli.EXIT_OK
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] is True and out["reset"]["reason"] == "carrier credit"
    assert out["reset"]["ip_bytes_before"] == 5_000_000
    books = read_books(tmp_path / "state" / "agent.db")
    assert books is not None and [e.kind for e in books.outbox] == ["meter_reset"]


def test_reset_with_no_books_and_without_a_reason(tmp_path, capsys):
    path = str(config(tmp_path))
    assert cli.main(["meter", "reset", "--reason", "x", "--yes", "--config", path]) == 3
    assert "nothing to reset" in capsys.readouterr().err
