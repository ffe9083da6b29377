"""Commands and desired config: the checks from tables, the handler with a fake client.

The fake client stands in for TelemetryClient's narrow surface (publish_reply, the
message sink, connect listeners, the outbox); the store is a real SQLite file. The
broker end to end is in tests/component/test_mqtt_commands.py.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.clock import ManualClock
from agent.domain import Event, EventKind
from agent.store import Store
from agent.telemetry.commands import (
    CFG_VERSION_KEY,
    NOT_AVAILABLE,
    THRESHOLDS_KEY,
    AgentHooks,
    CommandFailed,
    CommandHandler,
)
from agent.telemetry.contract import (
    MAX_COMMAND_BYTES,
    Channel,
    CommandStatus,
    check_command,
)
from agent.telemetry.outbox import Outbox

NOW = 1_800_000_000.0


def request(**fields: Any) -> bytes:
    body = {
        "v": 1,
        "id": "c-1",
        "name": "reset_meter",
        "args": {"reason": "plan reset"},
        "expires_wall_s": NOW + 60,
        **fields,
    }
    return json.dumps({k: v for k, v in body.items() if v is not ...}).encode()


@pytest.mark.parametrize(
    ("raw", "status", "cid", "reason"),
    [
        (request(), CommandStatus.ACCEPTED, "c-1", None),
        (request(name="replay_events", args={"from_seq": 3}), CommandStatus.ACCEPTED, "c-1", None),
        (
            request(name="set_thresholds", args={"thresholds": {"degraded_mos": 3.8}}),
            CommandStatus.ACCEPTED,
            "c-1",
            None,
        ),
        (request(name="run_failover_test", args={}), CommandStatus.ACCEPTED, "c-1", None),
        (b"{not json", CommandStatus.REJECTED, None, "not valid JSON"),
        (b"\xff\xfe", CommandStatus.REJECTED, None, "not valid JSON"),
        (b"[1, 2]", CommandStatus.REJECTED, None, "not a JSON object"),
        (request(id=...), CommandStatus.REJECTED, None, "malformed command (id: Field required)"),
        (request(id="has space"), CommandStatus.REJECTED, None, "malformed command (id:"),
        (request(expires_wall_s=...), CommandStatus.REJECTED, "c-1", "expires_wall_s"),
        (request(v=2), CommandStatus.REJECTED, "c-1", "malformed command (v:"),
        (request(expires_wall_s=NOW - 30), CommandStatus.REJECTED, "c-1", "expired 30 s ago"),
        (request(name="format_disk"), CommandStatus.REJECTED, "c-1", "unknown command"),
        (request(args={}), CommandStatus.REJECTED, "c-1", "invalid arguments (reason:"),
        (request(args={"reason": "x"}), CommandStatus.REJECTED, "c-1", "reason"),
        (request(args={"reason": "ok go", "extra": 1}), CommandStatus.REJECTED, "c-1", "extra"),
        (
            request(name="set_thresholds", args={"thresholds": {}}),
            CommandStatus.REJECTED,
            "c-1",
            "name at least one threshold",
        ),
        (
            request(name="set_thresholds", args={"thresholds": {"degraded_mos": 1.0}}),
            CommandStatus.REJECTED,
            "c-1",
            "degraded_mos",
        ),
        (
            request(name="set_thresholds", args={"thresholds": {"wifi": 1}}),
            CommandStatus.REJECTED,
            "c-1",
            "wifi",
        ),
        (
            request(name="set_thresholds", args={"thresholds": {"usage_thresholds_pct": [90, 50]}}),
            CommandStatus.REJECTED,
            "c-1",
            "increasing",
        ),
        (
            request(name="replay_events", args={"from_seq": 0}),
            CommandStatus.REJECTED,
            "c-1",
            "from_seq",
        ),
        (
            request(name="replay_events", args={"from_seq": 1, "epoch": "XYZ"}),
            CommandStatus.REJECTED,
            "c-1",
            "epoch",
        ),
        (
            request(args={"reason": "x" * MAX_COMMAND_BYTES}),
            CommandStatus.REJECTED,
            "c-1",
            "too large",
        ),
    ],
)
def test_requests_are_checked_before_anything_runs(raw, status, cid, reason):
    check = check_command(raw, NOW)
    assert check.status is status
    assert check.id == cid  # kept whenever it can be read, so the fleet can match
    if reason is None:
        assert check.reason is None and check.args is not None
    else:
        assert reason in (check.reason or ""), check.reason
        assert "\n" not in check.reason and check.args is None


# -- the handler --------------------------------------------------------------------------


class FakeClient:
    """TelemetryClient's surface for the handler; replies are acknowledged when `online`."""

    def __init__(self, store: Store, clock: ManualClock) -> None:
        self.clock = clock
        self.outbox = Outbox(store)
        self.online = True
        self.sink: Callable[..., None] | None = None
        self.listeners: list[Callable[[], None]] = []
        self.sent: list[tuple[Channel, dict[str, Any]]] = []
        self.woken = 0

    def set_message_sink(self, sink: Callable[..., None]) -> None:
        self.sink = sink

    def add_connect_listener(self, listener: Callable[[], None]) -> None:
        self.listeners.append(listener)

    def publish_reply(self, channel: Channel, payload: bytes, on_ack: Any = None) -> bool:
        if not self.online:
            return False
        self.sent.append((channel, json.loads(payload)))
        if on_ack is not None:
            on_ack(True, "Success")
        return True

    def wake(self) -> None:
        self.woken += 1

    def results(self, cid: str | None = None) -> list[dict[str, Any]]:
        return [
            b for c, b in self.sent if c is Channel.CMD_RES and (cid is None or b.get("id") == cid)
        ]

    def reports(self) -> list[dict[str, Any]]:
        return [b for c, b in self.sent if c is Channel.CFG_REP]


class Agent:
    """The hooks an agent would provide, recording calls."""

    def __init__(self) -> None:
        self.thresholds: dict[str, Any] = {"degraded_mos": 3.6, "degraded_loss_pct": 3.0}
        self.resets: list[str] = []

    def apply(self, given: dict[str, Any]) -> dict[str, Any]:
        if given.get("degraded_loss_pct") == 42:
            raise ValueError("42 is not allowed here")
        self.thresholds.update(given)
        return dict(self.thresholds)

    def reset(self, reason: str) -> dict[str, Any]:
        self.resets.append(reason)
        return {"cycle_bytes_before": 123}

    def hooks(self) -> AgentHooks:
        return AgentHooks(
            apply_thresholds=self.apply,
            current_thresholds=lambda: dict(self.thresholds),
            reset_meter=self.reset,
        )


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    db = Store(tmp_path / "agent.db")
    try:
        yield db
    finally:
        db.close()


def handler_for(store: Store, hooks: AgentHooks | None = None) -> tuple[CommandHandler, FakeClient]:
    clock = ManualClock(wall_s=NOW)
    client = FakeClient(store, clock)
    handler = CommandHandler(client, store, hooks, clock)  # type: ignore[arg-type]
    return handler, client


async def test_a_command_runs_once_per_id_and_every_answer_is_remembered(store):
    agent = Agent()
    handler, client = handler_for(store, agent.hooks())
    assert client.sink == handler.submit  # it registered itself
    await handler.handle(Channel.CMD_REQ, request())
    assert [r["status"] for r in client.results()] == ["accepted", "succeeded"]
    assert client.results()[-1]["result"] == {"cycle_bytes_before": 123}
    assert agent.resets == ["plan reset"]
    # The same id again (a QoS 1 redelivery, a fleet retry): the answer, not a second run.
    await handler.handle(Channel.CMD_REQ, request())
    assert agent.resets == ["plan reset"]
    assert client.results()[-1] == client.results()[1]
    # ... even after a restart: the ids live in SQLite.
    again, client2 = handler_for(store, agent.hooks())
    await again.handle(Channel.CMD_REQ, request())
    assert agent.resets == ["plan reset"] and client2.results()[0]["status"] == "succeeded"
    logged = [e.event for e in store.events() if e.event.kind is EventKind.COMMAND]
    assert logged[0].data == {"name": "reset_meter", "id": "c-1", "reason": "plan reset"}


async def test_refusals_are_answered_with_the_reason_and_nothing_runs(store):
    agent = Agent()
    handler, client = handler_for(store, agent.hooks())
    await handler.handle(Channel.CMD_REQ, b"garbage")
    await handler.handle(Channel.CMD_REQ, request(id="c-2", expires_wall_s=NOW - 1))
    await handler.handle(Channel.CMD_REQ, request(id="c-3", name="self_destruct"))
    answers = client.results()
    assert [(a.get("id"), a["status"]) for a in answers] == [
        (None, "rejected"),
        ("c-2", "rejected"),
        ("c-3", "rejected"),
    ]
    assert "not valid JSON" in answers[0]["reason"]
    assert "expired" in answers[1]["reason"] and "unknown command" in answers[2]["reason"]
    assert agent.resets == []
    # A rejected id stays rejected: a retry with the same id gets the same answer.
    await handler.handle(Channel.CMD_REQ, request(id="c-2", expires_wall_s=NOW + 60))
    assert client.results()[-1] == answers[1] and agent.resets == []


async def test_missing_hooks_fail_with_not_available(store):
    handler, client = handler_for(store, AgentHooks())
    await handler.handle(Channel.CMD_REQ, request(id="t", name="run_failover_test", args={}))
    await handler.handle(Channel.CMD_REQ, request(id="m"))
    for cid in ("t", "m"):
        final = client.results(cid)[-1]
        assert final["status"] == "failed" and final["reason"] == NOT_AVAILABLE


async def test_a_command_that_waited_past_its_expiry_is_expired_not_run(store):
    agent = Agent()
    handler, client = handler_for(store, agent.hooks())
    raw = request(expires_wall_s=NOW + 5)
    check = check_command(raw, NOW)
    assert check.status is CommandStatus.ACCEPTED
    client.clock.advance(10)  # queued behind something slow
    await handler._run(check)
    assert client.results()[-1]["status"] == "expired" and agent.resets == []


async def test_the_failover_test_reports_progress_then_its_result(store):
    release = asyncio.Event()

    async def run_test(duration_s: float) -> dict[str, Any]:
        await release.wait()
        return {"duration_s": duration_s, "switch_ms": 180.0}

    handler, client = handler_for(store, AgentHooks(run_failover_test=run_test))
    await handler.handle(
        Channel.CMD_REQ, request(id="t1", name="run_failover_test", args={"duration_s": 30})
    )
    await handler.handle(Channel.CMD_REQ, request(id="t2", name="run_failover_test", args={}))
    assert [r["status"] for r in client.results("t1")] == ["accepted", "in_progress"]
    assert client.results("t2")[-1]["reason"] == "a failover test is already running"
    release.set()
    assert handler._test is not None
    await handler._test
    assert client.results("t1")[-1] == {
        "v": 1,
        "id": "t1",
        "name": "run_failover_test",
        "status": "succeeded",
        "result": {"duration_s": 30.0, "switch_ms": 180.0},
        "wall_time_s": NOW,
    }


async def test_answers_sent_while_offline_go_on_the_next_connect(store):
    agent = Agent()
    handler, client = handler_for(store, agent.hooks())
    client.online = False
    await handler.handle(Channel.CMD_REQ, request())
    assert client.results() == [] and len(store.unreported_commands()) == 1
    client.online = True
    for listener in client.listeners:
        listener()
    assert [r["status"] for r in client.results()] == ["succeeded"]  # the latest answer
    assert store.unreported_commands() == []


async def test_thresholds_are_validated_applied_saved_reported_and_restored(store):
    agent = Agent()
    handler, client = handler_for(store, agent.hooks())
    args = {"thresholds": {"degraded_mos": 3.8}}
    await handler.handle(Channel.CMD_REQ, request(id="s1", name="set_thresholds", args=args))
    assert client.results("s1")[-1]["result"] == {
        "thresholds": {"degraded_mos": 3.8, "degraded_loss_pct": 3.0}
    }
    report = client.reports()[-1]
    assert report["thresholds"]["degraded_mos"] == 3.8 and report["version"] == 0
    assert store.get(THRESHOLDS_KEY) == {"degraded_mos": 3.8}
    change = [e.event for e in store.events() if e.event.kind is EventKind.CONFIG_CHANGED]
    assert change[0].data == {
        "source": "command s1",
        "changed": {"degraded_mos": {"from": 3.6, "to": 3.8}},
    }
    # The agent refuses a value: failed, with its reason, nothing saved.
    bad = {"thresholds": {"degraded_loss_pct": 42}}
    await handler.handle(Channel.CMD_REQ, request(id="s2", name="set_thresholds", args=bad))
    assert "42 is not allowed here" in client.results("s2")[-1]["reason"]
    assert store.get(THRESHOLDS_KEY) == {"degraded_mos": 3.8}
    # After a restart the overrides are applied again before any command.
    fresh = Agent()
    restarted, _ = handler_for(store, fresh.hooks())
    restarted.restore()
    assert fresh.thresholds["degraded_mos"] == 3.8


async def test_desired_config_by_version_and_a_broken_one_is_reported_not_applied(store):
    agent = Agent()
    handler, client = handler_for(store, agent.hooks())
    desired = {"v": 1, "version": 3, "thresholds": {"degraded_rtt_ms": 250}}
    handler._desired(json.dumps(desired).encode())
    assert agent.thresholds["degraded_rtt_ms"] == 250 and store.get(CFG_VERSION_KEY) == 3
    assert client.reports()[-1]["version"] == 3
    reports = len(client.reports())
    # The same (retained) desired config again on reconnect: nothing new, nothing sent.
    handler._desired(json.dumps(desired).encode())
    assert len(client.reports()) == reports
    # An older version is ignored.
    handler._desired(
        json.dumps({**desired, "version": 2, "thresholds": {"degraded_mos": 4}}).encode()
    )
    assert agent.thresholds["degraded_mos"] == 3.6
    # Broken ones: reported with the reason on cfg/rep, the thresholds untouched.
    for raw, reason in [
        (b'{"v":1,"version":4,"thresholds":{"degraded_mos":9}}', "degraded_mos"),
        (b'{"version": 5', "not valid JSON"),
        (b'{"v":1,"version":6,"thresholds":{"bogus":1}}', "bogus"),
    ]:
        handler._desired(raw)
        report = client.reports()[-1]
        assert reason in report["error"], report
        assert report["version"] == 3 and report["thresholds"]["degraded_mos"] == 3.6
    assert client.reports()[-1]["rejected_version"] == 6
    assert client.reports()[-2].get("rejected_version") is None  # unreadable: no version
    handler._desired(b"")  # the fleet cleared it: nothing happens
    # A good one clears the error.
    handler._desired(b'{"v":1,"version":7,"thresholds":{"degraded_mos":3.9}}')
    assert "error" not in client.reports()[-1] and agent.thresholds["degraded_mos"] == 3.9


async def test_replay_queues_stored_events_again_for_this_epoch_only(store):
    handler, client = handler_for(store, AgentHooks())
    seqs = [store.append_event(Event(EventKind.FAILOVER, NOW, {"n": n})) for n in range(5)]
    store.mark_published_many(seqs)
    epoch = client.outbox.epoch
    await handler.handle(
        Channel.CMD_REQ, request(id="r1", name="replay_events", args={"from_seq": seqs[2]})
    )
    result = client.results("r1")[-1]
    assert result["status"] == "succeeded" and client.woken == 1
    assert result["result"] == {
        "queued": 3,
        "first_seq": seqs[2],
        "last_seq": seqs[4],
        "oldest_kept_seq": seqs[0],
        "epoch": epoch,
    }
    assert [e.seq for e in store.unpublished_events()] == seqs[2:]
    other = "f" * 8 if epoch != "f" * 8 else "e" * 8
    await handler.handle(
        Channel.CMD_REQ,
        request(id="r2", name="replay_events", args={"from_seq": 1, "epoch": other}),
    )
    assert "is not this device's" in client.results("r2")[-1]["reason"]


async def test_a_hook_may_refuse_with_one_sentence(store):
    def refuse(_reason: str) -> dict[str, Any]:
        raise CommandFailed("the meter is not running")

    handler, client = handler_for(store, AgentHooks(reset_meter=refuse))
    await handler.handle(Channel.CMD_REQ, request())
    assert client.results()[-1]["reason"] == "the meter is not running"


async def test_the_queue_is_bounded_and_run_handles_in_order(store):
    agent = Agent()
    handler, client = handler_for(store, agent.hooks())
    for n in range(70):
        handler.submit(Channel.CMD_REQ, request(id=f"q{n}", args={"reason": f"reason {n}"}))
    busy = [r for r in client.results() if r["status"] == "rejected"]
    assert len(busy) == 6 and "busy" in busy[0]["reason"]
    stop = asyncio.Event()
    task = asyncio.create_task(handler.run(stop))
    for _ in range(1000):
        if len(agent.resets) == 64:
            break
        await asyncio.sleep(0)
    stop.set()
    await asyncio.wait_for(task, 5)
    assert agent.resets == [f"reason {n}" for n in range(64)]
