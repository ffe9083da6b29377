"""The client's connection against a real mosquitto: protocol fallback, refusals, the
uplink switch, bytes measured at the socket, and the faults the issue names (kill -9
with events in flight, both links down).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from agent.config import MqttSection
from agent.domain import Event, EventKind
from agent.store import Store
from agent.telemetry.contract import Channel, topic
from agent.telemetry.mqtt import MqttOptions, TelemetryClient
from tests.helpers.mosquitto import Mosquitto, TcpRelay, mosquitto, peer, until

__all__ = ["mosquitto"]

REPO = Path(__file__).resolve().parents[2]
DEVICE = "site-9"
STATE, EVT, TELE = (topic(DEVICE, c) for c in (Channel.STATE, Channel.EVT, Channel.TELE))
FAST = MqttOptions(
    will_delay_s=0,
    reconnect_base_s=0.1,
    reconnect_max_s=0.4,
    stable_after_s=0.0,
    connect_timeout_s=3.0,
    poll_s=0.2,
    drain_on_stop_s=1.0,
    auth_backoff_s=20.0,
)


@asynccontextmanager
async def running(
    client: TelemetryClient, *, wait: bool = True
) -> AsyncIterator[asyncio.Task[None]]:
    stop = asyncio.Event()
    task = asyncio.create_task(client.run(stop))
    try:
        if wait:
            await until(lambda: client.connected or task.done(), "the client to connect")
        yield task
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


def append(store: Store, kind: EventKind = EventKind.MODE_CHANGED, **data: Any) -> int:
    return store.append_event(Event(kind, time.time(), data))


async def test_falls_back_to_mqtt_311_when_the_broker_refuses_5(mosquitto, tmp_path):
    relay = TcpRelay(mosquitto.host, mosquitto.port, mqtt5=False)  # an old broker
    await relay.release()
    store = Store(tmp_path / "a.db")
    settings = MqttSection(host=relay.host, port=relay.port, tls=False)
    try:
        with peer(mosquitto, [STATE, EVT]) as fleet:
            client = TelemetryClient(settings, DEVICE, store, options=FAST)
            client.publish_state({"mode": "PRIMARY", "since": 1.0})
            async with running(client):
                assert client.protocol == "3.1.1" and relay.protocol_levels == [5, 4]
                assert client.last_wait == (0.0, "protocol")  # no back-off for the fallback
                seq = append(store)
                await until(lambda: [m for m in fleet.on(EVT) if m.body["seq"] == seq], "evt")
                await until(lambda: fleet.on(STATE), "the birth")
            # No will delay in 3.1.1: a planned stop says "offline" itself.
            offline = await until(lambda: fleet.on(STATE)[1:], "the offline state")
            assert offline[0].body == {"v": 1, "online": False}
    finally:
        await relay.close()
        store.close()


async def test_a_refused_login_waits_long(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="agent.telemetry.mqtt")
    broker = Mosquitto(tmp_path / "closed", anonymous=False)
    broker.start()
    store = Store(tmp_path / "a.db")
    try:
        settings = MqttSection(host=broker.host, port=broker.port, tls=False, username="nobody")
        client = TelemetryClient(settings, DEVICE, store, options=FAST)
        async with running(client, wait=False):
            await until(lambda: client.last_wait is not None, "the refusal")
            assert client.last_wait is not None
            delay_s, why = client.last_wait
            assert why == "auth" and 10.0 <= delay_s <= 20.0
            assert client.connects == 0
        assert any("check [mqtt] username" in r.getMessage() for r in caplog.records)
    finally:
        store.close()
        broker.close()


async def test_uplink_switch_reconnects_with_the_lte_keepalive_and_batches_telemetry(
    mosquitto, tmp_path
):
    store = Store(tmp_path / "a.db")
    options = FAST.replace(
        will_delay_s=5, keepalive_s=30, keepalive_cellular_s=900, batch_cellular_s=0.5,
        heartbeat_cellular_s=600.0, min_tele_interval_s=0.0,
    )  # fmt: skip
    settings = MqttSection(host=mosquitto.host, port=mosquitto.port, tls=False)
    links = {"cellular": {"verdict": "up", "rtt_ms": 60.0}}
    try:
        with peer(mosquitto, [STATE, TELE]) as fleet:
            client = TelemetryClient(settings, DEVICE, store, options=options)
            async with running(client):
                assert client._link is not None and client._link.keepalive_s == 30
                assert client.publish_telemetry({"mode": "PRIMARY", "links": links})
                await until(lambda: fleet.on(TELE), "telemetry at once on the primary")
                client.set_uplink("cellular")
                await until(lambda: client.connects == 2 and client.connected, "the reconnect")
                assert client._link is not None and client._link.keepalive_s == 900
                assert client.last_wait == (0.0, "uplink")
                # On LTE: changes wait for the batch; repeats of the same figures never go.
                sent = len(fleet.on(TELE))
                for rtt_ms in (60.0, 61.0, 200.0, 201.0, 400.0):
                    cellular = {"cellular": {"verdict": "up", "rtt_ms": rtt_ms}}
                    assert not client.publish_telemetry({"mode": "CELLULAR", "links": cellular})
                batch = await until(lambda: fleet.on(TELE)[sent:], "the batch", timeout_s=3)
                assert len(batch) == 1
                body = batch[0].body
                assert body["links"]["cellular"]["rtt_ms"] == 400.0
                assert [s["links"]["cellular"]["rtt_ms"] for s in body["earlier"]] == [60.0, 200.0]
                assert body["agent"]["mqtt_lte_bytes"] > 0
            states = [m.body["online"] for m in fleet.on(STATE)]
            assert states[:2] == [True, True]  # the switch did not flap the site offline
    finally:
        store.close()


async def test_bytes_are_measured_at_the_socket(mosquitto, tmp_path):
    relay = TcpRelay(mosquitto.host, mosquitto.port)
    await relay.release()
    store = Store(tmp_path / "a.db")
    settings = MqttSection(host=relay.host, port=relay.port, tls=False)
    try:
        client = TelemetryClient(settings, DEVICE, store, options=FAST)
        client.set_uplink("cellular")
        async with running(client):
            for n in range(5):
                append(store, n=n)
            await until(lambda: not store.unpublished_events(), "the events acknowledged")
        totals = client.wire_totals()
        # TCP payload, exactly what the relay carried each way ...
        await until(lambda: relay.bytes_down == totals.payload_in, "the relay to settle")
        assert (totals.payload_out, totals.payload_in) == (relay.bytes_up, relay.bytes_down)
        # ... plus 52 bytes of IP and TCP headers per segment, at least one per packet.
        assert totals.cellular_out >= totals.payload_out + 52 * 7  # CONNECT, birth, 5 events
        assert totals.cellular_in >= totals.payload_in + 52 * 7
        assert totals.primary == 0 and client.lte_wire_bytes == totals.cellular
    finally:
        await relay.close()
        store.close()


async def test_both_links_down_events_wait_and_arrive_late_in_order(mosquitto, tmp_path):
    relay = TcpRelay(mosquitto.host, mosquitto.port)
    await relay.release()
    store = Store(tmp_path / "a.db")
    settings = MqttSection(host=relay.host, port=relay.port, tls=False)
    try:
        with peer(mosquitto, [EVT]) as fleet:
            options = FAST.replace(late_after_s=0.3)
            client = TelemetryClient(settings, DEVICE, store, options=options)
            async with running(client):
                await relay.cut()  # no path to the broker at all
                await until(lambda: not client.connected, "the loss")
                down = [append(store, EventKind.BOTH_DOWN), append(store, EventKind.FAILOVER)]
                await asyncio.sleep(0.5)  # they are now older than late_after_s
                await relay.release()
                await until(lambda: len(fleet.on(EVT)) == 2, "the held events", timeout_s=5)
                fresh = append(store, EventKind.FAILBACK)
                await until(lambda: len(fleet.on(EVT)) == 3, "the fresh event")
            bodies = [m.body for m in fleet.on(EVT)]
            assert [b["seq"] for b in bodies] == [*down, fresh]
            assert [b.get("late") for b in bodies] == [True, True, None]
    finally:
        await relay.close()
        store.close()


CHILD = """
import asyncio, sys
from pathlib import Path
from agent.config import MqttSection
from agent.store import Store
from agent.telemetry.mqtt import MqttOptions, TelemetryClient

port, device, db = int(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
client = TelemetryClient(
    MqttSection(host="127.0.0.1", port=port, tls=False), device, Store(db),
    options=MqttOptions(will_delay_s=0, poll_s=0.1, reconnect_base_s=0.1, reconnect_max_s=0.2),
)
asyncio.run(client.run(asyncio.Event()))
"""


async def test_kill_9_with_events_in_flight_delivers_all_once_after_dedup(mosquitto, tmp_path):
    db = tmp_path / "agent.db"
    store = Store(db)  # the test appends, as the agent's other parts would

    def start() -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-c", CHILD, str(mosquitto.port), DEVICE, str(db)],
            cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
        )  # fmt: skip

    child = start()
    try:
        with peer(mosquitto, [EVT]) as fleet:
            first = [append(store, n=n) for n in range(3)]
            await until(lambda: len(fleet.on(EVT)) == 3, "the first events", timeout_s=10)
            mosquitto.freeze()  # PUBLISHes go into the socket, no PUBACK comes back
            in_flight = [append(store, n=n) for n in range(3, 6)]
            await asyncio.sleep(0.5)  # the child polls every 0.1 s and sends them
            child.send_signal(signal.SIGKILL)
            child.wait(5)
            mosquitto.thaw()
            assert [e.seq for e in store.unpublished_events()] == in_flight  # never acked
            child = start()
            later = append(store, n=6)
            await until(lambda: not store.unpublished_events(), "all acknowledged", timeout_s=10)
            await until(lambda: fleet.on(EVT) and fleet.on(EVT)[-1].body["seq"] == later, "last")
            received = [(m.body["epoch"], m.body["seq"]) for m in fleet.on(EVT)]
            unique = list(dict.fromkeys(received))  # the reader's de-duplication
            assert [seq for _, seq in unique] == [*first, *in_flight, later]
            assert len({epoch for epoch, _ in unique}) == 1
    finally:
        mosquitto.thaw()
        if child.poll() is None:
            child.kill()
            child.wait(5)
        store.close()
