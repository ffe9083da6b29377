"""The installer's failover test beside a simulated MikroTik, end to end in one process.

Real parts: the RouterOS API simulator (real wire protocol) as the router, the AT modem
simulator on a real pty, SIPp as the SBC and an RFC 862 echo responder, both on a
loopback address (no packet leaves the machine), the agent's own `run_agent` with its
control socket and instance lock, and the `cpe-agent failover-test` command code.
Each failure path ends by showing the normal state restored on the router.
"""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agent.app import run_agent
from agent.config import Settings, load_settings
from agent.domain import EventKind, LinkRole, Mode, Verdict
from agent.failover.controller import Transition
from agent.failover.fsm import InstallerTestSignal
from agent.installer import render
from agent.installer.command import run_command
from agent.installer.runner import LAST_REPORT_KEY
from agent.location import SiteBaseline
from agent.modem.location_watch import save_baseline
from agent.runtime import Agent
from agent.store import Store
from drivers.router.routeros import commands as c
from drivers.router.routeros.driver import RouterOSDriver
from hil.sims.at_modem import AtModemSim
from hil.sims.routeros import RouterOSSim
from hil.sims.sip_peer import sipp_argv
from hil.sims.udp_echo import UdpEchoResponder
from tests.helpers.mosquitto import until

USER, PASSWORD = "cpe-agent", "s3cret-for-tests"
SBC = "127.0.0.2"  # loopback: the probes, SIP and echoes never leave the machine
ECHO_PORT = 7007
SIPP_CONTROL_PORT = 8877

CONFIG = """
[agent]
device_id = "install-site-1"
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
reapply_on_drift = false
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
[modem]
driver = "at"
port = "{modem}"
poll_s = 1
timeout_s = 2.0
[installer]
echo_hosts = ["{sbc}"]
echo_port = {echo_port}
max_duration_s = 60
"""


@dataclass
class Site:
    router: RouterOSSim
    modem: AtModemSim
    echo: UdpEchoResponder
    settings: Settings
    tmp: Path

    def switch_on(self) -> bool:
        rule = next(
            i
            for i in self.router.items("/ip/firewall/mangle")
            if i.get("comment") == f"{c.TAG}{c.SWITCH_ROLE}"
        )
        return rule["disabled"] == "false"

    def events(self) -> list[tuple[EventKind, dict[str, Any]]]:
        store = Store(self.settings.agent.state_dir / "agent.db")
        try:
            return [(e.event.kind, e.event.data) for e in store.events()]
        finally:
            store.close()

    def stored_report(self) -> dict[str, Any] | None:
        store = Store(self.settings.agent.state_dir / "agent.db")
        try:
            return store.get(LAST_REPORT_KEY)
        finally:
            store.close()


@pytest.fixture
def sbc() -> Iterator[None]:
    process = subprocess.Popen(
        sipp_argv(SBC, 5060, control_port=SIPP_CONTROL_PORT),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield
    finally:
        process.terminate()
        process.wait(10)


@pytest.fixture
async def site(tmp_path: Path, sbc: None) -> AsyncIterator[Site]:
    with (
        RouterOSSim(profile="7.18", model="RB2011", user=USER, password=PASSWORD) as router,
        AtModemSim("quectel-ec25", boot_s=0.1) as modem,
    ):
        router.set_ping(SBC, 12.0, routing_table="main")
        router.set_ping(SBC, 45.0, routing_table=c.TABLE)
        modem.set_signal(rsrp_dbm=-85, rsrq_db=-9, sinr_db=16, rssi_dbm=-60)  # good coverage
        host, port = router.address
        path = tmp_path / "agent.toml"
        path.write_text(
            CONFIG.format(
                state=tmp_path / "state",
                run=tmp_path / "run",
                host=host,
                port=port,
                user=USER,
                password=PASSWORD,
                sbc=SBC,
                modem=modem.path,
                echo_port=ECHO_PORT,
            )
        )
        settings = load_settings(path)
        # The installer recorded the site's location (cpe-agent location record).
        settings.agent.state_dir.mkdir(parents=True)
        store = Store(settings.agent.state_dir / "agent.db")
        save_baseline(
            store,
            SiteBaseline(
                plmns=frozenset({"310260"}),
                cell_ids=frozenset({1}),
                samples=6,
                first_s=1.0,
                last_s=2.0,
            ),
        )
        store.close()
        async with UdpEchoResponder(SBC, ECHO_PORT, rate_kbps=1000.0) as echo:
            yield Site(router, modem, echo, settings, tmp_path)


async def with_agent(site: Site, body: Callable[[Agent], Awaitable[None]]) -> None:
    """Run the whole agent, wait for its first verdicts, run `body`, stop."""

    async def then(agent: Agent) -> None:
        await until(
            lambda: agent.link_verdict(LinkRole.PRIMARY) is Verdict.UP, "a healthy primary", 20
        )
        await until(lambda: agent.modem_figures is not None, "the modem's first report", 20)
        await body(agent)

    await asyncio.wait_for(run_agent(site.settings, then=then, handle_signals=False), 90)


def step(report: dict[str, Any], name: str) -> dict[str, Any]:
    return next(s for s in report["steps"] if s["name"] == name)


# -- PASS -------------------------------------------------------------------------------------


async def test_pass_in_process_prints_one_json_report_and_restores(site: Site) -> None:
    """No agent running: the command starts one in-process, tests, stops it."""
    out = io.StringIO()
    code = await asyncio.wait_for(
        run_command(site.settings, force=False, max_duration_s=None, as_json=True, out=out), 90
    )
    report = json.loads(out.getvalue())
    failed = [(s["name"], s["figure"]) for s in report["steps"] if s["status"] != "pass"]
    assert report["verdict"] == "PASS", json.dumps(failed, indent=1)
    assert code == render.EXIT_PASS == report["exit_code"]
    assert [s["name"] for s in report["steps"]][:3] == ["router", "rules", "sip_helper"]
    assert "RB2011" in step(report, "router")["figure"]
    assert step(report, "sip_lte")["figures"]["answered"] == 1
    assert step(report, "voice_lte")["figures"]["mos"] > 4.0
    # The echo's simulated bottleneck is 1,000 kbit/s: 11 calls of 90 kbit/s.
    capacity = step(report, "capacity_lte")["figures"]
    assert 8 <= capacity["calls"] <= 12, capacity
    assert 0 < report["lte_test_bytes"] <= report["max_lte_bytes"]
    assert report["voip_path_after"] == "primary" and not site.switch_on()
    kinds = [k for k, _ in site.events()]
    assert EventKind.TEST_STARTED in kinds and EventKind.TEST_FINISHED in kinds
    assert EventKind.FAILOVER not in kinds and EventKind.FAILBACK not in kinds  # no e-mails
    finished = next(d for k, d in site.events() if k is EventKind.TEST_FINISHED)
    assert finished["verdict"] == "PASS" and len(finished["steps"]) == len(report["steps"])
    assert site.stored_report() is not None


async def test_pass_through_the_running_agent_shows_a_checklist(site: Site) -> None:
    """The agent runs (it holds the lock): the command asks it over the control socket."""
    out = io.StringIO()
    codes: list[int] = []

    async def installer(agent: Agent) -> None:
        codes.append(
            await run_command(
                site.settings, force=False, max_duration_s=None, as_json=False, out=out
            )
        )

    await with_agent(site, installer)
    text = out.getvalue()
    assert codes == [render.EXIT_PASS], text
    assert "the running agent" in text.splitlines()[0]
    assert "  [ ok ] Forced failover to LTE: in " in text
    assert "  [ ok ] Failback to the primary: in " in text
    assert "Verdict: PASS" in text and "VoIP goes by the primary again." in text


# -- failure paths ------------------------------------------------------------------------------


async def run_test(
    site: Site,
    *,
    force: bool = False,
    during: Callable[[Agent, dict[str, Any]], None] | None = None,
    before: Callable[[Agent], Awaitable[None]] | None = None,
) -> dict[str, Any]:
    reports: list[dict[str, Any]] = []

    async def body(agent: Agent) -> None:
        if before is not None:
            await before(agent)
        options = agent.installer.options(force=force)
        task = agent.installer.start(options, (lambda m: during(agent, m)) if during else None)
        reports.append((await task).to_dict())

    await with_agent(site, body)
    return reports[0]


def assert_never_switched(site: Site, report: dict[str, Any]) -> None:
    assert step(report, "switch_to_lte")["status"] == "skip"
    assert not site.switch_on()
    assert EventKind.MODE_CHANGED not in [k for k, _ in site.events()]


async def test_no_sim_fails_before_any_switch(site: Site) -> None:
    site.modem.remove_sim()
    report = await run_test(site)
    assert report["verdict"] == "FAIL"
    modem = step(report, "modem")
    assert modem["status"] == "fail" and "no SIM card" in modem["figure"]
    assert "insert the provider's SIM" in modem["remedy"]
    assert_never_switched(site, report)


async def test_no_signal_fails_before_any_switch(site: Site) -> None:
    site.modem.set_registration(2)  # searching: nothing to register on
    site.modem.set_signal(rsrp_dbm=-140, rsrq_db=-20, sinr_db=-20, rssi_dbm=-113)
    report = await run_test(site)
    modem = step(report, "modem")
    assert modem["status"] == "fail" and "not registered (searching)" in modem["figure"]
    assert "antenna" in modem["remedy"]
    assert_never_switched(site, report)


async def test_rules_missing_fail_before_any_switch(site: Site) -> None:
    async def remove_rules(agent: Agent) -> None:
        host, port = site.router.address
        other = RouterOSDriver(
            host=host, port=port, username=USER, password=PASSWORD, plain_api=True, timeout_s=2.0
        )
        await other.open()
        try:
            assert await other.remove_all() > 0  # someone cleans the router by hand
        finally:
            await other.close()

    report = await run_test(site, before=remove_rules)
    rules = step(report, "rules")
    assert rules["status"] == "fail" and "restart the agent" in rules["remedy"]
    assert step(report, "switch_to_lte")["status"] == "skip"


async def test_sip_helper_on_fails_with_the_command_to_turn_it_off(site: Site) -> None:
    async def helper_on(agent: Agent) -> None:
        sip = next(i for i in site.router.items("/ip/firewall/service-port") if i["name"] == "sip")
        site.router.db.set("/ip/firewall/service-port", {".id": sip[".id"], "disabled": "false"})

    report = await run_test(site, before=helper_on)
    helper = step(report, "sip_helper")
    assert helper["status"] == "fail"
    assert "/ip firewall service-port disable sip" in helper["remedy"]
    assert report["verdict"] == "FAIL"
    assert report["voip_path_after"] == "primary" and not site.switch_on()


async def test_a_call_in_progress_refuses_unless_forced(site: Site) -> None:
    site.router.add_connection(
        "192.168.88.20:10000", f"{SBC}:16384", orig_rate="80000", repl_rate="80000"
    )
    refused = await run_test(site)
    assert refused["refused"] is True and step(refused, "calls")["status"] == "fail"
    assert "--force" in step(refused, "calls")["remedy"]
    assert render.exit_code(refused) == render.EXIT_REFUSED
    assert_never_switched(site, refused)
    forced = await run_test(site, force=True)
    assert step(forced, "calls")["status"] == "warn"
    assert step(forced, "switch_to_lte")["status"] == "pass"
    assert forced["voip_path_after"] == "primary"


async def test_primary_not_back_at_the_end_keeps_voip_on_lte_and_says_so(site: Site) -> None:
    async def primary_dies_during_the_test(agent: Agent) -> None:
        real = agent.installer_signal

        async def signal(which: InstallerTestSignal) -> Transition | None:
            if which is InstallerTestSignal.END:
                site.router.set_ping(SBC, None, routing_table="main")
                await until(
                    lambda: agent.link_verdict(LinkRole.PRIMARY) is Verdict.DOWN,
                    "the primary judged down",
                    10,
                )
            return await real(which)

        agent.installer_signal = signal  # type: ignore[method-assign,assignment]

    report = await run_test(site, before=primary_dies_during_the_test)
    back = step(report, "failback")
    assert back["status"] == "fail" and "VoIP stays on LTE" in back["figure"]
    assert "primary link" in back["remedy"]
    assert report["voip_path_after"] == "cellular" and site.switch_on()
    assert step(report, "primary_again")["status"] == "skip"


async def test_interrupted_half_way_restores_the_normal_state(site: Site) -> None:
    seen: list[str] = []

    async def body(agent: Agent) -> None:
        task: asyncio.Task[Any] | None = None

        def progress(message: dict[str, Any]) -> None:
            if message.get("type") == "step":
                seen.append(message["step"]["name"])
                if message["step"]["name"] == "switch_to_lte" and task is not None:
                    assert site.switch_on()  # really on LTE now
                    task.cancel()  # the installer's Ctrl-C

        task = agent.installer.start(agent.installer.options(), progress)
        report = (await task).to_dict()
        assert report["interrupted"] is True and report["verdict"] == "FAIL"
        assert step(report, "failback")["status"] == "pass"
        assert step(report, "sip_lte")["status"] == "skip"
        assert report["voip_path_after"] == "primary"
        assert agent.controller.state.mode is Mode.PRIMARY

    await with_agent(site, body)
    assert "switch_to_lte" in seen and not site.switch_on()
    assert site.stored_report()["interrupted"] is True  # type: ignore[index]


async def test_a_test_persisted_half_way_resumes_in_the_normal_state(site: Site) -> None:
    """The agent gone half-way (kill -9, power loss: no restore on the way out) leaves
    TEST persisted with VoIP on LTE; the next start restores the normal state. The lab
    test kills a real agent process (tests/e2e/test_installer_lab.py)."""

    async def gone_half_way(agent: Agent) -> None:
        await agent.installer_signal(InstallerTestSignal.START)
        assert agent.controller.state.mode is Mode.TEST and site.switch_on()

    await with_agent(site, gone_half_way)  # stops without leaving TEST
    assert site.switch_on()

    async def started(agent: Agent) -> None:
        assert agent.controller.state.mode is Mode.PRIMARY

    await with_agent(site, started)
    assert not site.switch_on()
