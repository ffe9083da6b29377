"""The CLI: one sentence per problem, documented exit codes, --json for machines."""

from __future__ import annotations

import json
import time
from pathlib import Path

from agent import cli
from agent.status import write_status

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
"""


def config(tmp_path: Path, text: str = CONFIG) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(text.format(runtime=tmp_path / "run", state=tmp_path / "state"))
    return path


def test_broken_config_exits_2_with_one_line_per_problem(tmp_path, capsys):
    path = config(tmp_path, CONFIG.replace('"site-1"', '"Bad Id"').replace("wan0", "lte0"))
    assert cli.main(["check-config", "--config", str(path)]) == cli.EXIT_CONFIG
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2
    assert all(line.startswith(f"cpe-agent: {path}: [") for line in lines)


def test_broken_config_json(tmp_path, capsys):
    path = config(tmp_path, CONFIG.replace('"site-1"', '"Bad Id"'))
    assert cli.main(["check-config", "--json", "--config", str(path)]) == 2
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] is False and out["exit_code"] == 2 and len(out["problems"]) == 1


def test_valid_config(tmp_path, capsys):
    assert cli.main(["check-config", "--config", str(config(tmp_path))]) == 0
    assert "valid" in capsys.readouterr().out


def test_status_when_agent_not_running_says_so(tmp_path, capsys):
    assert cli.main(["status", "--config", str(config(tmp_path))]) == cli.EXIT_NEEDS_HUMAN
    err = capsys.readouterr().err
    assert "the agent is not running" in err and "\n" not in err.strip()


def test_status_stale_file_means_not_running(tmp_path, capsys):
    path = config(tmp_path)
    write_status(tmp_path / "run", {"mode": "PRIMARY", "written_wall_s": time.time() - 3600})
    assert cli.main(["status", "--config", str(path)]) == cli.EXIT_NEEDS_HUMAN


def test_status_human_and_json(tmp_path, capsys):
    path = config(tmp_path)
    now = time.time()
    status = {
        "mode": "CELLULAR",
        "voip_path": "cellular",
        "mode_since_wall_s": now - 30,
        "written_wall_s": now,
        "links": {
            "primary": {
                "interface": "wan0",
                "verdict": "down",
                "loss_pct": 100.0,
                "reason": "0 of 3 ping targets answer",
                "verdict_since_wall_s": now - 31,
            },
            "cellular": {
                "interface": "lte0",
                "verdict": "up",
                "loss_pct": 0.0,
                "rtt_ms": 42.0,
                "jitter_ms": 3.0,
                "mos": 4.3,
            },
        },
        "router": {"driver": "linux", "in_sync": True, "drift": [], "blocked_packets": 7},
    }
    write_status(tmp_path / "run", status)
    assert cli.main(["status", "--config", str(path)]) == 0
    text = capsys.readouterr().out
    assert "CELLULAR" in text and "since 30 s ago" in text
    assert "lte0: loss 0.0%, rtt 42 ms, jitter 3 ms, MOS 4.30" in text
    assert "7 non-VoIP packets blocked on LTE" in text
    assert cli.main(["status", "--json", "--config", str(path)]) == 0
    parsed = json.loads(capsys.readouterr().out)
    assert parsed["mode"] == "CELLULAR" and parsed["ok"] is True


def test_no_command_prints_help_and_exits_2(capsys):
    assert cli.main([]) == 2
