"""Commands and desired config end to end, against a real mosquitto.

The fleet side is a test peer publishing on `cmd/req` and `cfg/des`; the device is a
TelemetryClient with a CommandHandler and hooks that record what they were asked.
Bad input (malformed, oversized, unknown, expired commands; a broken retained
`cfg/des`) gets a clear answer and loses nothing: events keep flowing around it.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from agent.config import MqttSection
from agent.domain import Event, EventKind
from agent.store import Store
from agent.telemetry.commands import AgentHooks, CommandHandler
from agent.telemetry.contract import Channel, topic
from agent.telemetry.mqtt import MqttOptions, TelemetryClient
from tests.helpers.mosquitto import Mosquitto, Peer, mosquitto, peer, until

__all__ = ["mosquitto"]

DEVICE = "site-7"
REQ, RES = topic(DEVICE, Channel.CMD_REQ), topic(DEVICE, Channel.CMD_RES)
DES, REP = topic(DEVICE, Channel.CFG_DES), topic(DEVICE, Channel.CFG_REP)
EVT = topic(DEVICE, Channel.EVT)
FAST = MqttOptions(
    will_delay_s=0,
    reconnect_base_s=0.1,
    reconnect_max_s=0.4,
    stable_after_s=0.0,
    connect_timeout_s=3.0,
    poll_s=0.2,
    drain_on_stop_s=1.0,
)


@dataclass
class Hooks:
    thresholds: dict[str, Any] = field(default_factory=lambda: {"degraded_mos": 3.6})
    resets: list[str] = field(default_factory=list)

    def agent_hooks(self) -> AgentHooks:
        def apply(given: dict[str, Any]) -> dict[str, Any]:
            self.thresholds.update(given)
            return dict(self.thresholds)

        def reset(reason: str) -> dict[str, Any]:
            self.resets.append(reason)
            return {"reset": True}

        return AgentHooks(
            apply_thresholds=apply,
            current_thresholds=lambda: dict(self.thresholds),
            reset_meter=reset,
        )


@dataclass
class Site:
    client: TelemetryClient
    store: Store
    hooks: Hooks


@pytest.fixture
async def site(mosquitto: Mosquitto, tmp_path: Path) -> AsyncIterator[Site]:
    store = Store(tmp_path / "agent.db")
    settings = MqttSection(host=mosquitto.host, port=mosquitto.port, tls=False)
    client = TelemetryClient(settings, DEVICE, store, options=FAST)
    hooks = Hooks()
    handler = CommandHandler(client, store, hooks.agent_hooks())
    stop = asyncio.Event()
    tasks = [asyncio.create_task(client.run(stop)), asyncio.create_task(handler.run(stop))]
    try:
        await until(lambda: client.connected, "the device to connect")
        yield Site(client, store, hooks)
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 10)
        store.close()


@pytest.fixture
def fleet(mosquitto: Mosquitto) -> Iterator[Peer]:
    with peer(mosquitto, [RES, REP, EVT]) as p:
        yield p


def cmd(cid: str, name: str = "reset_meter", ttl_s: float = 60, **args: Any) -> str:
    args = args or ({"reason": "new plan month"} if name == "reset_meter" else {})
    return json.dumps(
        {"v": 1, "id": cid, "name": name, "args": args, "expires_wall_s": time.time() + ttl_s}
    )


def answers(fleet: Peer, cid: str | None) -> list[str]:
    return [m.body["status"] for m in fleet.on(RES) if m.body.get("id") == cid]


async def test_a_command_is_answered_accepted_then_succeeded_once(site, fleet):
    fleet.publish(REQ, cmd("c-1"))
    await until(lambda: answers(fleet, "c-1") == ["accepted", "succeeded"], "the answers")
    # The fleet retries the same id (it lost our answer): the same answer, no second reset.
    fleet.publish(REQ, cmd("c-1"))
    await until(lambda: len(answers(fleet, "c-1")) == 3, "the repeated answer")
    assert answers(fleet, "c-1")[-1] == "succeeded" and site.hooks.resets == ["new plan month"]
    await until(lambda: not site.store.unreported_commands(), "answers marked acknowledged")


async def test_bad_commands_are_rejected_with_a_reason_and_lose_nothing(site, fleet):
    seq_before = site.store.append_event(Event(EventKind.FAILOVER, time.time(), {"n": 1}))
    bad = {
        "garbage": b"\x00\x01 not json",
        "huge": cmd("c-huge", reason="x" * 6000).encode(),
        "unknown": cmd("c-unknown", name="open_the_pod_bay_doors").encode(),
        "expired": cmd("c-expired", ttl_s=-5).encode(),
        "bad-args": cmd("c-bad", name="replay_events", from_seq=-1).encode(),
    }
    for payload in bad.values():
        fleet.publish(REQ, payload)
    seq_after = site.store.append_event(Event(EventKind.FAILBACK, time.time(), {"n": 2}))
    fleet.publish(REQ, cmd("c-good"))
    await until(lambda: answers(fleet, "c-good")[-1:] == ["succeeded"], "the good command")
    results = {m.body.get("id"): m.body for m in fleet.on(RES)}
    assert "not valid JSON" in results[None]["reason"]
    assert "too large" in results["c-huge"]["reason"]
    assert "unknown command" in results["c-unknown"]["reason"]
    assert "expired" in results["c-expired"]["reason"]
    assert "from_seq" in results["c-bad"]["reason"]
    for cid in ("c-huge", "c-unknown", "c-expired", "c-bad"):
        assert results[cid]["status"] == "rejected"
    assert site.hooks.resets == ["new plan month"]  # only the good one ran
    # Events kept flowing around the garbage, in order.
    await until(lambda: len(fleet.on(EVT)) >= 3, "the events")
    seqs = [m.body["seq"] for m in fleet.on(EVT)]
    assert seqs[:2] == [seq_before, seq_after]


async def test_thresholds_by_command_and_by_desired_config_are_reported(site, fleet, mosquitto):
    set_cmd = cmd("t-1", name="set_thresholds", thresholds={"degraded_mos": 3.9})
    fleet.publish(REQ, set_cmd)
    await until(lambda: answers(fleet, "t-1")[-1:] == ["succeeded"], "set_thresholds")
    await until(
        lambda: fleet.on(REP)[-1].body["thresholds"]["degraded_mos"] == 3.9, "the new report"
    )
    # A broken desired config, retained (so it comes again on every reconnect).
    fleet.publish(DES, b'{"v":1,"version":2,"thresholds":{"degraded_mos":"high"}}', retain=True)
    await until(lambda: "error" in fleet.on(REP)[-1].body, "the refusal on cfg/rep")
    assert "degraded_mos" in fleet.on(REP)[-1].body["error"]
    assert fleet.on(REP)[-1].body["rejected_version"] == 2
    assert site.hooks.thresholds["degraded_mos"] == 3.9  # untouched
    # Fixed by the fleet: applied, reported with its version, error cleared.
    fleet.publish(DES, b'{"v":1,"version":3,"thresholds":{"degraded_mos":3.7}}', retain=True)
    await until(lambda: fleet.on(REP)[-1].body.get("version") == 3, "version 3 reported")
    assert "error" not in fleet.on(REP)[-1].body and site.hooks.thresholds["degraded_mos"] == 3.7
    # A newcomer finds the report retained.
    with peer(mosquitto, [REP]) as late:
        retained = await until(lambda: late.on(REP), "the retained report")
        assert retained[0].retain and retained[0].body["version"] == 3
    fleet.publish(DES, b"", retain=True)  # clean the broker for the next test


async def test_replay_sends_stored_events_again_with_their_epoch_and_seq(site, fleet):
    seqs = [site.store.append_event(Event(EventKind.MODE_CHANGED, time.time(), {"n": n}))
            for n in range(4)]  # fmt: skip
    await until(lambda: {m.body["seq"] for m in fleet.on(EVT)} >= set(seqs), "the events")
    first_pass = [m.body for m in fleet.on(EVT)]
    fleet.publish(REQ, cmd("r-1", name="replay_events", from_seq=seqs[1]))
    await until(lambda: answers(fleet, "r-1")[-1:] == ["succeeded"], "the replay")
    result = [m.body for m in fleet.on(RES) if m.body["id"] == "r-1"][-1]["result"]
    assert result["first_seq"] == seqs[1] and result["queued"] >= 3
    await until(lambda: len(fleet.on(EVT)) >= len(first_pass) + 3, "the replayed events")
    replayed = [m.body for m in fleet.on(EVT)][len(first_pass) :]
    assert [e["seq"] for e in replayed][:3] == seqs[1:]
    by_seq = {e["seq"]: e for e in first_pass}
    for event in replayed[:3]:  # the same event: a reader de-duplicates by (epoch, seq)
        assert event["epoch"] == by_seq[event["seq"]]["epoch"]
        assert event["data"] == by_seq[event["seq"]]["data"]
