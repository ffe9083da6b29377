"""The modem seen through the agent: `cpe-agent modem` against the AT modem simulator on a
real pty, and the agent's modem watch feeding status and events."""

from __future__ import annotations

import json
from pathlib import Path

from agent import cli
from hil.sims.at_modem import AtModemSim

CONFIG = """
[agent]
device_id = "modem-site-1"
state_dir = "{state}"
runtime_dir = "{run}"
[links.primary]
interface = "wan0"
[links.cellular]
interface = "lte0"
[voip]
lan_interfaces = ["lan0"]
sbc_addresses = ["203.0.113.10"]
[modem]
driver = "at"
port = "{port}"
timeout_s = 2.0
"""


def write_config(tmp_path: Path, port: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(CONFIG.format(state=tmp_path / "s", run=tmp_path / "r", port=port))
    return path


def test_modem_command_reads_the_modem_once_when_the_agent_is_not_running(tmp_path, capsys):
    with AtModemSim("quectel-ec25", boot_s=0.1) as sim:
        path = write_config(tmp_path, sim.path)
        assert cli.main(["modem", "--json", "--config", str(path)]) == cli.EXIT_OK
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] is True
    assert out["registration"] in ("home", "roaming")
    assert isinstance(out["rsrp_dbm"], int) and -140 <= out["rsrp_dbm"] <= -44
    assert out["coverage"] in ("excellent", "good", "fair", "poor", "no_service")
    assert out["identity"]["imei"]


def test_modem_command_says_clearly_when_the_port_is_wrong(tmp_path, capsys):
    path = write_config(tmp_path, str(tmp_path / "no-such-tty"))
    code = cli.main(["modem", "--config", str(path)])
    assert code in (cli.EXIT_NEEDS_HUMAN, cli.EXIT_RETRY)
    err = capsys.readouterr().err.strip()
    assert err.startswith("cpe-agent: ") and "\n" not in err


def test_modem_section_needs_its_address(tmp_path, capsys):
    path = write_config(tmp_path, "x").read_text().replace('port = "x"\n', "")
    (tmp_path / "b.toml").write_text(path)
    assert cli.main(["check-config", "--config", str(tmp_path / "b.toml")]) == cli.EXIT_CONFIG
    assert "driver 'at' needs 'port'" in capsys.readouterr().err


async def test_running_agent_reports_the_modem_and_a_vanished_sim(tmp_path):
    """The agent's modem watch: figures in the status file, following the modem."""
    import asyncio

    from agent.app import Agent, build_modem
    from agent.clock import Clock
    from agent.config import load_settings
    from agent.store import Store
    from tests.helpers.fake_router import FakeRouter

    with AtModemSim("quectel-ec25", boot_s=0.1) as sim:
        text = CONFIG.format(state=tmp_path / "s", run=tmp_path / "r", port=sim.path)
        # Loopback SBC: the agent's own probes never leave the machine.
        text = text.replace("203.0.113.10", "127.0.0.2").replace("timeout_s = 2.0", "poll_s = 1")
        (tmp_path / "a.toml").write_text(text)
        settings = load_settings(tmp_path / "a.toml")
        store = Store(tmp_path / "s" / "agent.db")
        agent = Agent(settings, FakeRouter(), store, Clock())
        agent.modem = build_modem(settings)
        await agent.start()
        stop = asyncio.Event()
        running = asyncio.create_task(agent.run_until(stop))
        try:

            async def until(predicate, what):
                for _ in range(200):
                    if predicate():
                        return
                    await asyncio.sleep(0.05)
                raise AssertionError(f"timed out waiting for {what}")

            await until(lambda: agent.status().get("modem"), "the first modem report")
            assert agent.status()["modem"]["sim_state"] == "ready"
            assert agent.signal is not None and agent.signal["bars"] is not None
            sim.remove_sim()
            # The status follows at the next poll; the event itself waits out the
            # recovery policy's grace (sim_missing_s, tested in test_modem_recovery).
            await until(
                lambda: agent.status()["modem"]["sim_state"] != "ready", "the SIM to show gone"
            )
        finally:
            stop.set()
            await asyncio.wait_for(running, 10)
            store.close()


def test_modem_on_the_bench_by_port_without_a_config_file(capsys):
    with AtModemSim("sierra-em7455", boot_s=0.1) as sim:
        code = cli.main(
            [
                "modem",
                "--port",
                sim.path,
                "--vendor",
                "sierra",
                "--json",
                "--config",
                "/nonexistent/agent.toml",
            ]
        )
    assert code == cli.EXIT_OK
    out = json.loads(capsys.readouterr().out)
    assert out["coverage"] in ("excellent", "good", "fair", "poor", "no_service")
    assert out["identity"]["imei"]
