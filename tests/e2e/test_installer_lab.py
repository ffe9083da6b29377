"""The installer's failover test in the virtual lab: `cpe-agent failover-test` run in the
CPE's namespace, as an installer runs it, against the real kernel's forwarding, sipp
SBCs, UDP echo responders and the simulated modem on a pty.

Each failure path ends by showing the normal state back: VoIP on the primary.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hil.agent_process import CPE_AGENT, AgentProcess
from hil.lab import Lab
from hil.lab import topology as t

pytestmark = [
    pytest.mark.root,
    pytest.mark.lab,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: builds network namespaces"),
]

SWITCH_LINE = "Forced failover to LTE: in "


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    the_lab = Lab(prefix=f"cpt{os.getpid()}i-")
    try:
        the_lab.up()
        # What the installer does first at a new site: record where the modem is.
        done = the_lab.exec(t.CPE, [str(CPE_AGENT), "location", "record", "--samples", "1",
                                    "--interval-s", "0", "--config", str(the_lab.config_path)],
                            timeout=60)
        assert done.returncode == 0, done.stderr
        yield the_lab
    finally:
        the_lab.down()


@pytest.fixture(autouse=True)
def healthy_site(lab: Lab) -> Iterator[None]:
    yield
    for link in ("primary", "cellular"):
        lab.impair(link, "clear")
        lab.impair(link, "up")
    lab.modem("insert_sim")
    lab.modem("set_registration", stat=1)
    lab.modem("set_signal", **t.MODEM_SIGNAL)


def failover_test(lab: Lab, timeout_s: float = 150) -> tuple[int, dict[str, Any]]:
    """The command as an installer runs it with no agent running (in-process), --json."""
    argv = [str(CPE_AGENT), "failover-test", "--json", "--config", str(lab.config_path)]
    done = lab.exec(t.CPE, argv, timeout=timeout_s)
    assert done.stdout.strip(), done.stderr
    return done.returncode, json.loads(done.stdout)


def step(report: dict[str, Any], name: str) -> dict[str, Any]:
    return next(s for s in report["steps"] if s["name"] == name)


def switch_rule_present(lab: Lab) -> bool:
    """The one routing rule that is the switch: VoIP by the cellular table."""
    rules = lab.exec(t.CPE, ["ip", "rule", "show"], check=True).stdout
    return "fwmark 0x4350/0x4350 lookup 4241" in rules


def test_the_test_passes_on_a_healthy_site_and_prints_one_json_report(lab: Lab) -> None:
    code, report = failover_test(lab)
    problems = [(s["name"], s["status"], s["figure"]) for s in report["steps"]
                if s["status"] != "pass"]
    assert report["verdict"] == "PASS", problems
    assert code == 0 == report["exit_code"]
    assert {"name", "status", "figure"} <= set(report["steps"][0])
    assert len(report["steps"]) == 15
    # Real figures from the lab: the LTE carrier's own delay, three SBCs over LTE.
    assert step(report, "sip_lte")["figures"]["answered"] == len(t.SBC_ADDRESSES)
    assert step(report, "voice_lte")["figures"]["received"] >= 45
    assert step(report, "switch_to_lte")["figures"]["switch_ms"] < 2000
    assert 0 < report["lte_test_bytes"] <= report["max_lte_bytes"]
    assert report["lte_interface_bytes"] >= report["lte_test_bytes"] * 0.9
    assert report["voip_path_after"] == "primary" and not switch_rule_present(lab)


def test_sbcs_unreachable_over_lte_fail_and_say_what_to_check(lab: Lab) -> None:
    lab.impair("cellular", "blackhole")
    code, report = failover_test(lab)
    assert code == 6 and report["verdict"] == "FAIL"
    sip = step(report, "sip_lte")
    assert sip["status"] == "fail" and sip["figure"].startswith("0 of 3 answered")
    assert "APN" in sip["remedy"]
    assert step(report, "voice_lte")["status"] == "fail"
    assert step(report, "failback")["status"] == "pass"
    assert report["voip_path_after"] == "primary" and not switch_rule_present(lab)


def test_no_sim_and_no_signal_fail_before_moving_anything(lab: Lab) -> None:
    lab.modem("remove_sim")
    code, report = failover_test(lab)
    assert code == 6 and step(report, "modem")["figure"].endswith("no SIM card")
    assert step(report, "switch_to_lte")["status"] == "skip"
    lab.modem("insert_sim")
    lab.modem("set_registration", stat=2)
    code, report = failover_test(lab)
    modem = step(report, "modem")
    assert code == 6 and "not registered (searching)" in modem["figure"]
    assert "antenna" in modem["remedy"]
    assert not switch_rule_present(lab)


def test_rules_missing_fail_before_moving_anything(lab: Lab, tmp_path: Path) -> None:
    # An agent started in-process installs its rules first; a running agent told not to
    # repair drift is where rules removed by hand stay missing.
    agent = start_agent(lab, tmp_path, {"CPE_AGENT_ROUTER__REAPPLY_ON_DRIFT": "false"})
    try:
        lab.exec(t.CPE, ["nft", "delete", "table", "inet", "cpe_agent"], check=True)
        command = person_run(lab, agent, "--json")
        out, err = command.communicate(timeout=120)
        report = json.loads(out)
        assert command.returncode == 6, err
        rules = step(report, "rules")
        assert rules["status"] == "fail" and "restart the agent" in rules["remedy"]
        assert step(report, "switch_to_lte")["status"] == "skip"
        assert report["voip_path_after"] == "primary"
    finally:
        agent.stop()


def test_sip_helper_on_fails_with_what_to_remove(lab: Lab) -> None:
    # The customer's own SIP ALG: a ct helper of type "sip" assigned to SIP traffic.
    alg = ('table inet alg {\n  ct helper sip_5060 { type "sip" protocol udp; l3proto ip; }\n'
           '  chain pre { type filter hook prerouting priority filter; '
           'udp dport 5060 ct helper set "sip_5060"; }\n}\n')
    lab.exec(t.CPE, ["nft", "-f", "-"], input=alg, check=True)
    try:
        code, report = failover_test(lab)
    finally:
        lab.exec(t.CPE, ["nft", "delete", "table", "inet", "alg"], check=True)
    helper = step(report, "sip_helper")
    assert code == 6 and helper["status"] == "fail" and "ct helper" in helper["remedy"]
    assert report["voip_path_after"] == "primary"


def start_agent(lab: Lab, tmp_path: Path,
                overrides: dict[str, str] | None = None) -> AgentProcess:
    agent = AgentProcess(lab.ns(t.CPE), lab.config_path, tmp_path, overrides)
    agent.start()
    agent.wait_for(lambda s: s["links"]["primary"]["verdict"] == "up", 30, "a healthy primary")
    return agent


def person_run(lab: Lab, agent: AgentProcess, *extra: str) -> subprocess.Popen[str]:
    """The command as a person runs it, through the running agent (its state dirs)."""
    env = {**os.environ, "CPE_AGENT_AGENT__STATE_DIR": str(agent.state_dir),
           "CPE_AGENT_AGENT__RUNTIME_DIR": str(agent.runtime_dir)}
    return subprocess.Popen(
        ["ip", "netns", "exec", lab.ns(t.CPE), str(CPE_AGENT), "failover-test", "--config",
         str(lab.config_path), *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def read_until(process: subprocess.Popen[str], text: str) -> list[str]:
    seen: list[str] = []
    assert process.stdout is not None
    for line in process.stdout:
        seen.append(line)
        if text in line:
            return seen
    raise AssertionError(f"no line with {text!r}: {''.join(seen)}")


def test_ctrl_c_half_way_restores_the_normal_state(lab: Lab, tmp_path: Path) -> None:
    agent = start_agent(lab, tmp_path)
    try:
        command = person_run(lab, agent)
        read_until(command, SWITCH_LINE)
        assert switch_rule_present(lab)  # really on LTE now
        command.send_signal(signal.SIGINT)
        out, err = command.communicate(timeout=60)
        assert command.returncode == 130, err
        assert "The test was stopped before its end; the normal state was restored." in out
        assert "VoIP goes by the primary again." in out
        assert not switch_rule_present(lab)
        assert agent.wait_mode("PRIMARY", 10)["voip_path"] == "primary"
    finally:
        agent.stop()


def test_agent_killed_half_way_is_restored_at_its_next_start(lab: Lab, tmp_path: Path) -> None:
    agent = start_agent(lab, tmp_path)
    try:
        command = person_run(lab, agent)
        read_until(command, SWITCH_LINE)
        agent.stop(signal.SIGKILL)
        _out, err = command.communicate(timeout=30)
        assert command.returncode == 3 and "closed the connection" in err
        assert switch_rule_present(lab)  # the crash left VoIP on LTE ...
        agent.start()
        agent.wait_for(lambda s: s["voip_path"] == "primary", 30, "VoIP back on the primary")
        assert not switch_rule_present(lab)  # ... and the next start restored it
    finally:
        agent.stop()


def test_primary_not_back_keeps_voip_on_lte_and_says_so(lab: Lab, tmp_path: Path) -> None:
    agent = start_agent(lab, tmp_path)
    try:
        command = person_run(lab, agent)
        read_until(command, SWITCH_LINE)
        lab.impair("primary", "down")  # the cable pulled while the test runs
        out, _err = command.communicate(timeout=120)
        assert command.returncode == 6
        assert "[FAIL] Failback to the primary: the primary was down at the end" in out
        assert "VoIP stays on LTE until the primary is healthy" in out
        assert agent.status()["voip_path"] == "cellular"
        lab.impair("primary", "up")
        # The agent moves VoIP back by itself, after the dwell.
        agent.wait_for(lambda s: s["voip_path"] == "primary", 60, "the failback")
        assert not switch_rule_present(lab)
    finally:
        agent.stop()
