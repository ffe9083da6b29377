"""The MQTT client against a real mosquitto: birth, will, ordered events, outages, restarts.

Delivery is proved by a separate subscriber receiving the messages, and durability by
reading the SQLite store. Every wait polls with a deadline; the few fixed waits are
bounded checks that something does NOT happen, and say so.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from agent.config import MqttSection
from agent.domain import Event, EventKind
from agent.store import Store
from agent.telemetry.contract import Channel, topic
from agent.telemetry.mqtt import (
    MqttOptions,
    TelemetryClient,
    TelemetryError,
    backoff_delay_s,
)
from agent.telemetry.outbox import EPOCH_KEY, Outbox
from tests.helpers.mosquitto import Mosquitto, TcpRelay, make_tls_files, mosquitto, until

REPO = Path(__file__).resolve().parents[2]
DEVICE = "site-42"
STATE = topic(DEVICE, Channel.STATE)
EVT = topic(DEVICE, Channel.EVT)
TELE = topic(DEVICE, Channel.TELE)
FAST = MqttOptions(
    will_delay_s=0,
    reconnect_base_s=0.1,
    reconnect_max_s=0.4,
    stable_after_s=0.0,
    connect_timeout_s=3.0,
    poll_s=0.2,
    drain_on_stop_s=1.0,
)

__all__ = ["mosquitto"]  # the fixture, imported for the tests below


# -- the fleet side: a subscriber that records what it receives ---------------------------


@dataclass(frozen=True)
class Received:
    topic: str
    raw: bytes
    retain: bool

    @property
    def body(self) -> Any:
        return json.loads(self.raw) if self.raw else None


class Subscriber:
    """A paho client in its own thread, as the fleet side would run one."""

    def __init__(
        self,
        broker: Mosquitto,
        topics: list[str],
        *,
        client_id: str | None = None,
        session_expiry_s: int = 0,
    ) -> None:
        self.messages: list[Received] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        #: SUBACKs received: one per (re)connect, as on_connect subscribes every time.
        self.subacks = 0
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or f"sub-{uuid.uuid4().hex[:8]}",
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        self.client.reconnect_delay_set(0.05, 0.2)
        subscriptions = [(t, SubscribeOptions(qos=1)) for t in topics]

        def on_connect(client: paho.Client, *_: Any) -> None:
            client.subscribe(subscriptions)

        def on_subscribe(*_: Any) -> None:
            self.subacks += 1
            self._subscribed.set()

        def on_message(_client: Any, _userdata: Any, message: paho.MQTTMessage) -> None:
            with self._lock:
                self.messages.append(Received(message.topic, message.payload, message.retain))

        self.client.on_connect = on_connect
        self.client.on_subscribe = on_subscribe
        self.client.on_message = on_message
        properties = Properties(PacketTypes.CONNECT)
        properties.SessionExpiryInterval = session_expiry_s
        self.client.connect(broker.host, broker.port, keepalive=10, properties=properties)
        self.client.loop_start()
        assert self._subscribed.wait(5), "the test subscriber could not subscribe"

    def on(self, name: str) -> list[Received]:
        with self._lock:
            return [m for m in self.messages if m.topic == name]

    def seqs(self) -> list[int]:
        return [m.body["seq"] for m in self.on(EVT)]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@contextlib.contextmanager
def subscriber(broker: Mosquitto, topics: list[str], **kwargs: Any) -> Iterator[Subscriber]:
    sub = Subscriber(broker, topics, **kwargs)
    try:
        yield sub
    finally:
        sub.close()


def settings_for(broker: Mosquitto, **overrides: Any) -> MqttSection:
    return MqttSection(host=broker.host, port=broker.port, tls=False, **overrides)


@contextlib.asynccontextmanager
async def running(client: TelemetryClient, *, wait_connected: bool = True) -> AsyncIterator[None]:
    stop = asyncio.Event()
    task = asyncio.create_task(client.run(stop))
    try:
        if wait_connected:
            await until(lambda: client.connected or task.done(), "the client to connect")
            if task.done():
                task.result()
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
        assert not paho_threads(client), "run() returned with paho's thread still running"


def paho_threads(client: TelemetryClient) -> list[threading.Thread]:
    name = f"paho-mqtt-client-{client.client_id}"
    return [t for t in threading.enumerate() if t.name == name and t.is_alive()]


def append(store: Store, kind: EventKind = EventKind.FAILOVER, **data: Any) -> int:
    return store.append_event(Event(kind, time.time(), data))


def unpublished(store: Store) -> list[int]:
    return [e.seq for e in store.unpublished_events(limit=10_000)]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    db = Store(tmp_path / "agent.db")
    try:
        yield db
    finally:
        db.close()


# -- pure parts ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("attempt", "rand", "expected"),
    [
        (0, 0.0, 0.5),  # never zero: a refused broker is not hammered
        (0, 0.999999, 2.0),
        (3, 0.5, 0.5 + (16 - 0.5) * 0.5),
        (20, 0.999999, 120.0),  # capped
        (10_000, 0.0, 0.5),  # no overflow
    ],
)
def test_backoff_is_jittered_exponential_and_capped(attempt, rand, expected):
    assert backoff_delay_s(attempt, 2.0, 120.0, rand) == pytest.approx(expected, rel=1e-5)


def test_unusable_settings_are_one_clear_error(tmp_path, store):
    with pytest.raises(TelemetryError, match="host is not set"):
        TelemetryClient(MqttSection(), DEVICE, store)
    missing = tmp_path / "nope.crt"
    with pytest.raises(TelemetryError, match="check \\[mqtt\\] ca_file"):
        TelemetryClient(MqttSection(host="x", ca_file=missing), DEVICE, store)
    with pytest.raises(TelemetryError, match="password_file"):
        TelemetryClient(
            MqttSection(host="x", tls=False, username="u", password_file=missing), DEVICE, store
        )


def test_outbox_sends_in_order_and_marks_only_what_was_acknowledged(tmp_path):
    path = tmp_path / "agent.db"
    db = Store(path)
    woken: list[int] = []
    db.add_listener(woken.append)
    seqs = [append(db, n=n) for n in range(5)]
    assert woken == seqs  # the store wakes the outbox after each commit
    outbox = Outbox(db)
    assert outbox.take(2) == db.unpublished_events(limit=2)
    assert [e.seq for e in outbox.take(10)] == seqs[2:]
    for seq in seqs:
        outbox.sent(seq, now_s=100.0)
    assert outbox.oldest_inflight_age_s(130.0) == 30.0
    outbox.acked(seqs[1])
    outbox.acked(seqs[0])
    outbox.rejected(seqs[2])  # the broker said no: it stays queued
    assert unpublished(db) == seqs  # nothing is marked before the commit
    assert outbox.commit() == 2
    assert unpublished(db) == seqs[2:]
    assert outbox.take(10) == []  # this session has sent everything once
    outbox.begin_session()  # a new connection sends the rest again, oldest first
    assert [e.seq for e in outbox.take(10)] == seqs[2:]
    epoch = outbox.epoch
    db.close()
    again = Store(path)
    assert Outbox(again).epoch == epoch  # the epoch lives as long as the database
    again.close()
    fresh = Store(tmp_path / "new.db")
    assert Outbox(fresh).epoch != epoch  # a new database, a new sequence
    fresh.close()


# -- against a real broker ----------------------------------------------------------------


async def test_birth_is_retained_and_state_follows_the_mode(mosquitto, store):
    client = TelemetryClient(settings_for(mosquitto), DEVICE, store, options=FAST)
    client.publish_state({"mode": "CELLULAR", "since": 1_800_000_000.25})
    with subscriber(mosquitto, [STATE]) as sub:
        async with running(client):
            birth = await until(lambda: sub.on(STATE), "the birth message")
            assert birth[0].body == {
                "v": 1,
                "online": True,
                "mode": "CELLULAR",
                "since": 1_800_000_000.25,
            }
            # A subscriber that comes after the birth still gets it: it is retained.
            with subscriber(mosquitto, [STATE]) as late_comer:
                retained = await until(lambda: late_comer.on(STATE), "the retained birth")
                assert retained[0].retain and retained[0].body == birth[0].body

            assert client.publish_state({"mode": "PRIMARY", "since": 1_800_000_100.0})
            live = await until(lambda: sub.on(STATE)[1:], "the new state")
            assert live[0].body["mode"] == "PRIMARY"
            with subscriber(mosquitto, [STATE]) as late_comer:
                retained = await until(lambda: late_comer.on(STATE), "the retained state")
                assert retained[0].retain and retained[0].body["mode"] == "PRIMARY"


async def test_events_arrive_in_order_with_epoch_and_seq(mosquitto, store):
    backlog = [append(store, EventKind.MODE_CHANGED, i=i) for i in range(12)]  # > the window
    with subscriber(mosquitto, [EVT, TELE]) as sub:
        client = TelemetryClient(settings_for(mosquitto), DEVICE, store, options=FAST)
        async with running(client):
            live = [append(store, EventKind.FAILOVER, reason="primary down")]
            old = store.append_event(Event(EventKind.FAILBACK, time.time() - 300, {}))
            await until(lambda: len(sub.on(EVT)) == 14, "14 events")
            await until(lambda: not unpublished(store), "every event marked published")

            links = {"primary": {"verdict": "down", "loss_pct": 100.0, "reason": "no reply"}}
            before = client.bytes_sent
            assert client.publish_telemetry({"links": links, "mode": "CELLULAR"})
            tele = (await until(lambda: sub.on(TELE), "telemetry"))[0]
            assert tele.body["links"] == {"primary": {"verdict": "down", "loss_pct": 100.0}}
            assert client.bytes_sent - before == len(TELE) + len(tele.raw)

    events = [m.body for m in sub.on(EVT)]
    assert [e["seq"] for e in events] == [*backlog, *live, old]
    assert {e["epoch"] for e in events} == {store.get(EPOCH_KEY)}
    assert [e["kind"] for e in events[-2:]] == ["failover", "failback"]
    assert events[0]["data"] == {"i": 0} and events[0]["v"] == 1
    assert [e.get("late") for e in events] == [None] * 13 + [True]
    # Bytes are counted as topic + payload of what was handed to the broker.
    assert client.bytes_by_channel[Channel.EVT] == sum(len(EVT) + len(m.raw) for m in sub.on(EVT))


async def test_broker_outage_loses_nothing_and_only_acks_mark_events(mosquitto, store):
    # The agent reaches the broker through a relay, so the test can hold the agent back
    # after the broker restart until the fleet side has subscribed again (mosquitto
    # 2.0.11 does not restore MQTT 5 sessions across a restart, even with persistence).
    relay = TcpRelay(mosquitto.host, mosquitto.port)
    await relay.release()
    settings = MqttSection(host=relay.host, port=relay.port, tls=False)
    try:
        with subscriber(mosquitto, [EVT]) as sub:
            client = TelemetryClient(settings, DEVICE, store, options=FAST)
            async with running(client):
                first = append(store, n=1)
                await until(lambda: sub.seqs() == [first], "the first event")
                await until(lambda: not unpublished(store), "the first event marked")

                mosquitto.stop()
                await until(lambda: not client.connected, "the client to notice")
                await relay.hold()  # connection refused, as while the broker is down
                meanwhile = [append(store, n=n) for n in (2, 3, 4)]
                assert unpublished(store) == meanwhile

                mosquitto.start()
                await until(lambda: sub.subacks == 2, "the fleet side to subscribe again")
                await relay.release()
                await until(lambda: sub.seqs() == [first, *meanwhile], "the queued events")
                await until(lambda: not unpublished(store), "the queued events marked")
                assert client.connects == 2

                # A broker that takes the PUBLISH but never answers: nothing is marked.
                mosquitto.freeze()
                hung = append(store, n=5)
                await until(lambda: client.outbox.inflight == 1, "the event handed over")
                assert unpublished(store) == [hung]  # no PUBACK can have come back
                mosquitto.thaw()
                await until(lambda: not unpublished(store), "the acknowledged event marked")
                await until(lambda: sub.seqs()[-1:] == [hung], "the event after the thaw")
            assert sub.seqs() == [first, *meanwhile, hung]
    finally:
        await relay.close()


async def test_agent_restart_resends_nothing_already_acknowledged(mosquitto, tmp_path):
    path = tmp_path / "state" / "agent.db"
    with subscriber(mosquitto, [EVT, STATE]) as sub:
        first_run = Store(path)
        client = TelemetryClient(settings_for(mosquitto), DEVICE, first_run, options=FAST)
        async with running(client):
            done = [append(first_run, n=n) for n in range(3)]
            await until(lambda: not unpublished(first_run), "the first run's events marked")
        epoch = first_run.get(EPOCH_KEY)
        first_run.close()

        second_run = Store(path)
        try:
            births = len(sub.on(STATE))
            client = TelemetryClient(settings_for(mosquitto), DEVICE, second_run, options=FAST)
            async with running(client):
                await until(lambda: len(sub.on(STATE)) > births, "the second birth")
                new = append(second_run, n=3)
                # The outbox sends in seq order: any resend would arrive before `new`.
                await until(lambda: sub.seqs()[-1:] == [new], "the new event")
            assert sub.seqs() == [*done, new]
            assert {m.body["epoch"] for m in sub.on(EVT)} == {epoch}
        finally:
            second_run.close()


CHILD = """
import asyncio, sys
from pathlib import Path
from agent.config import MqttSection
from agent.store import Store
from agent.telemetry.mqtt import MqttOptions, TelemetryClient

port, device, db = int(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
client = TelemetryClient(
    MqttSection(host="127.0.0.1", port=port, tls=False), device, Store(db),
    options=MqttOptions(will_delay_s=0),
)
client.publish_state({"mode": "PRIMARY", "since": 1.0})
asyncio.run(client.run(asyncio.Event()))
"""


async def test_will_appears_when_the_agent_is_killed(mosquitto, tmp_path):
    with subscriber(mosquitto, [STATE]) as sub:
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(mosquitto.port), DEVICE, str(tmp_path / "a.db")],
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        try:
            online = await until(lambda: sub.on(STATE), "the child's birth", timeout_s=10)
            assert online[0].body["online"] is True
            child.send_signal(signal.SIGKILL)  # no DISCONNECT: the socket just closes
            child.wait(5)
            will = await until(lambda: sub.on(STATE)[1:], "the last will")
            assert will[0].body == {"v": 1, "online": False}
        finally:
            if child.poll() is None:
                child.kill()
                child.wait(5)
    with subscriber(mosquitto, [STATE]) as late_comer:
        retained = await until(lambda: late_comer.on(STATE), "the retained will")
        assert retained[0].retain and retained[0].body["online"] is False


async def test_planned_restart_does_not_flap_but_a_lasting_stop_shows(mosquitto, store):
    options = MqttOptions(**{**FAST.__dict__, "will_delay_s": 1})
    with subscriber(mosquitto, [STATE]) as sub:
        first = TelemetryClient(settings_for(mosquitto), DEVICE, store, options=options)
        async with running(first):
            await until(lambda: sub.on(STATE), "the first birth")
        stopped_at = time.monotonic()
        second = TelemetryClient(settings_for(mosquitto), DEVICE, store, options=options)
        async with running(second):
            await until(lambda: len(sub.on(STATE)) == 2, "the second birth")
            # A bounded check for an absence: the will delay (1 s) passes with no offline.
            await asyncio.sleep(max(0.0, stopped_at + 1.5 - time.monotonic()))
            assert [m.body["online"] for m in sub.on(STATE)] == [True, True]
        # A stop that lasts: the broker publishes the will once the delay is over.
        offline = await until(lambda: sub.on(STATE)[2:], "the delayed will", timeout_s=5)
        assert offline[0].body == {"v": 1, "online": False}


async def test_a_raising_callback_does_not_stop_the_network_thread(mosquitto, store, caplog):
    failing = threading.Event()
    failing.set()
    raised: list[str] = []

    def hook(name: str) -> None:
        if name == "publish" and failing.is_set():
            raised.append(name)
            raise RuntimeError("injected failure in paho's thread")

    options = MqttOptions(**{**FAST.__dict__, "ack_timeout_s": 1.5})
    caplog.set_level(logging.ERROR, logger="agent.telemetry.mqtt")
    with subscriber(mosquitto, [EVT]) as sub:
        client = TelemetryClient(
            settings_for(mosquitto), DEVICE, store, options=options, network_hook=hook
        )
        async with running(client):
            first = append(store, n=1)
            # The birth's and the event's PUBACK callbacks have both raised.
            await until(lambda: len(raised) >= 2 and sub.seqs() == [first], "two failures")
            later = [append(store, n=2), append(store, n=3)]
            # Only paho's thread writes to the socket: later events arriving prove it lives.
            await until(lambda: sub.seqs() == [first, *later], "the later events")
            assert client.connected and client.connects == 1
            assert unpublished(store) == [first, *later]  # their acks were lost, not faked

            failing.clear()
            healthy = append(store, n=4)
            await until(lambda: healthy not in unpublished(store), "an ack on the same link")
            assert client.connects == 1
            # The lost acks time out; a reconnect resends them (the only resend MQTT allows).
            await until(lambda: not unpublished(store), "the resent events marked")
            assert client.connects == 2
    assert set(sub.seqs()) == {first, *later, healthy}
    assert any("network thread carries on" in r.getMessage() for r in caplog.records)


async def test_cancelled_run_still_leaves_cleanly(mosquitto, store):
    """The composition root may cancel the task instead of setting `stop`."""
    options = MqttOptions(**{**FAST.__dict__, "will_delay_s": 1})
    with subscriber(mosquitto, [STATE]) as sub:
        client = TelemetryClient(settings_for(mosquitto), DEVICE, store, options=options)
        task = asyncio.create_task(client.run(asyncio.Event()))
        await until(lambda: sub.on(STATE), "the birth")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 5)
        assert not paho_threads(client) and not client.connected
        # It left with "disconnect with will message": offline shows after the delay.
        offline = await until(lambda: sub.on(STATE)[1:], "the delayed will")
        assert offline[0].body["online"] is False


async def test_mutual_tls(tmp_path, store, caplog):
    broker = Mosquitto(tmp_path / "broker", tls=True)
    broker.start()
    try:
        assert broker.tls_files is not None and broker.tls_port is not None
        tls = broker.tls_files
        settings = MqttSection(
            host="127.0.0.1",
            port=broker.tls_port,
            tls=True,
            ca_file=tls.ca_file,
            cert_file=tls.client_cert,
            key_file=tls.client_key,
        )
        with subscriber(broker, [STATE]) as sub:  # the fleet side on the plain listener
            client = TelemetryClient(settings, DEVICE, store, options=FAST)
            async with running(client):
                await until(lambda: sub.on(STATE), "the birth over TLS")

        # A broker whose certificate the agent's CA did not sign: refused, and said so.
        caplog.set_level(logging.WARNING, logger="agent.telemetry.mqtt")
        stranger = make_tls_files(tmp_path / "other").ca_file
        untrusting = TelemetryClient(
            settings.model_copy(update={"ca_file": stranger}), DEVICE, store, options=FAST
        )
        async with running(untrusting, wait_connected=False):
            await until(
                lambda: any("not trusted" in r.getMessage() for r in caplog.records),
                "the trust error",
            )
            assert not untrusting.connected
    finally:
        broker.close()


async def test_broker_down_for_two_minutes_then_everything_delivered_in_order(mosquitto, store):
    """A long outage: the client's back-off reaches its cap (here 5 s) and keeps trying;
    events made every 30 s meanwhile all arrive, in order, once the broker is back."""
    relay = TcpRelay(mosquitto.host, mosquitto.port)
    await relay.release()
    settings = MqttSection(host=relay.host, port=relay.port, tls=False)
    options = MqttOptions(
        will_delay_s=0,
        reconnect_base_s=0.5,
        reconnect_max_s=5.0,
        stable_after_s=0.0,
        connect_timeout_s=3.0,
        poll_s=0.2,
        drain_on_stop_s=1.0,
    )
    outage_s, every_s = 120.0, 30.0
    try:
        with subscriber(mosquitto, [EVT]) as sub:
            client = TelemetryClient(settings, DEVICE, store, options=options)
            async with running(client):
                first = append(store, n=0)
                await until(lambda: sub.seqs() == [first], "the first event")
                mosquitto.stop()
                await relay.hold()
                await until(lambda: not client.connected, "the client to notice")
                meanwhile = []
                for n in range(1, int(outage_s / every_s) + 1):
                    await asyncio.sleep(every_s)  # the outage's length is the scenario
                    meanwhile.append(append(store, n=n))
                assert unpublished(store) == meanwhile
                attempts_during_outage = client.connects
                mosquitto.start()
                await until(lambda: sub.subacks == 2, "the fleet side to subscribe again")
                await relay.release()
                await until(
                    lambda: sub.seqs() == [first, *meanwhile], "the queued events", timeout_s=30
                )
                await until(lambda: not unpublished(store), "the queued events marked")
                assert client.connects == attempts_during_outage + 1
    finally:
        await relay.close()
