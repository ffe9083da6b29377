"""Who may say what: mutual TLS with certificates made here, and an ACL of pattern lines.

The broker takes each client's identity from its certificate and forces the client id
to it, so the ACL's `%c` cannot be spoofed (tests/helpers/mosquitto.py: DEVICE_ACL).
Every check is on DELIVERY, never on a SUBACK: a positive control proves the message
flowed where it may, then the intruder's side shows it did not flow where it may not.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.config import MqttSection
from agent.domain import Event, EventKind
from agent.store import Store
from agent.telemetry.commands import AgentHooks, CommandHandler
from agent.telemetry.contract import Channel, topic
from agent.telemetry.mqtt import MqttOptions, TelemetryClient
from tests.helpers.mosquitto import (
    DEVICE_ACL,
    Mosquitto,
    issue_client_cert,
    peer,
    until,
)

FAST = MqttOptions(
    will_delay_s=0,
    reconnect_base_s=0.1,
    reconnect_max_s=0.4,
    stable_after_s=0.0,
    connect_timeout_s=3.0,
    poll_s=0.2,
    drain_on_stop_s=1.0,
    auth_backoff_s=30.0,
)
#: How long an absence is watched for, after the positive control has arrived.
QUIET_S = 0.5


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    b = Mosquitto(tmp_path_factory.mktemp("acl-broker"), tls=True, acl=DEVICE_ACL, plain=False)
    try:
        b.start()
        yield b
    finally:
        b.close()


@pytest.fixture(scope="module")
def certs(broker: Mosquitto) -> dict[str, tuple[Path, Path]]:
    assert broker.tls_files is not None
    names = ("site-a", "site-b", "fleet-console", "fleet-notifier")
    return {name: issue_client_cert(broker.tls_files, name) for name in names}


def device_settings(broker: Mosquitto, cert: tuple[Path, Path]) -> MqttSection:
    assert broker.tls_files is not None and broker.tls_port is not None
    return MqttSection(
        host="127.0.0.1",
        port=broker.tls_port,
        tls=True,
        ca_file=broker.tls_files.ca_file,
        cert_file=cert[0],
        key_file=cert[1],
    )


class Device:
    def __init__(self, client: TelemetryClient, handler: CommandHandler, resets: list[str]):
        self.client = client
        self.handler = handler
        self.resets = resets


async def _start(device_id: str, broker: Mosquitto, cert: tuple[Path, Path], db: Path):
    store = Store(db)
    client = TelemetryClient(device_settings(broker, cert), device_id, store, options=FAST)
    resets: list[str] = []

    def reset(reason: str) -> dict[str, Any]:
        resets.append(reason)
        return {}

    handler = CommandHandler(client, store, AgentHooks(reset_meter=reset))
    stop = asyncio.Event()
    tasks = [asyncio.create_task(client.run(stop)), asyncio.create_task(handler.run(stop))]
    await until(lambda: client.connected, f"{device_id} to connect over mutual TLS")
    return Device(client, handler, resets), stop, tasks, store


async def _stop(stop: asyncio.Event, tasks: list[asyncio.Task[Any]], store: Store) -> None:
    stop.set()
    await asyncio.wait_for(asyncio.gather(*tasks), 10)
    store.close()


@pytest.fixture
async def site_a(broker, certs, tmp_path) -> AsyncIterator[Device]:
    device, stop, tasks, store = await _start("site-a", broker, certs["site-a"], tmp_path / "a.db")
    try:
        yield device
    finally:
        await _stop(stop, tasks, store)


def command(cid: str, reason: str) -> str:
    body = {"v": 1, "id": cid, "name": "reset_meter", "args": {"reason": reason}}
    return json.dumps({**body, "expires_wall_s": time.time() + 60})


async def test_another_device_can_neither_read_nor_inject(broker, certs, site_a):
    a_evt, a_state = topic("site-a", Channel.EVT), topic("site-a", Channel.STATE)
    with (
        peer(broker, ["cpe/v1/#"], cert=certs["fleet-console"]) as fleet,
        peer(broker, ["cpe/v1/site-a/#", "cpe/v1/+/evt", "#"], cert=certs["site-b"]) as intruder,
    ):
        # site-a reports; the fleet hears it (positive control) ...
        seq = site_a.client.store.append_event(Event(EventKind.FAILOVER, time.time(), {}))
        await until(lambda: [m for m in fleet.on(a_evt) if m.body["seq"] == seq], "a's event")
        # ... and site-b, subscribed to a's topics and to everything, hears nothing of it.
        intruder.publish("cpe/v1/site-b/state", '{"v":1,"online":true}')
        await until(lambda: fleet.on("cpe/v1/site-b/state"), "b's own state (b may publish)")
        await asyncio.sleep(QUIET_S)  # bounded check for an absence
        assert [m.topic for m in intruder.all() if "site-a" in m.topic] == []

        # site-b injects into a's topics: a command, a fake event, a fake offline state.
        intruder.publish(topic("site-a", Channel.CMD_REQ), command("evil-1", "hijacked"))
        intruder.publish(a_evt, '{"v":1,"epoch":"deadbeef","seq":1,"kind":"failback"}')
        intruder.publish(a_state, '{"v":1,"online":false}', retain=True)
        # The fleet sends a real command after them (positive control, same topic).
        fleet.publish(topic("site-a", Channel.CMD_REQ), command("good-1", "by the provider"))
        res = topic("site-a", Channel.CMD_RES)
        await until(
            lambda: [m for m in fleet.on(res) if m.body.get("status") == "succeeded"],
            "the fleet's command to run",
        )
        assert site_a.resets == ["by the provider"]  # the injected one never arrived
        assert {m.body.get("id") for m in fleet.on(res)} == {"good-1"}
        # Only a's own events (its failover, the command's audit entry): none forged.
        assert {m.body.get("epoch") for m in fleet.on(a_evt)} == {site_a.client.outbox.epoch}
        assert [m.body["online"] for m in fleet.on(a_state)] == [True]
    # A newcomer reads the retained state: still a's own, not the intruder's.
    with peer(broker, [a_state], cert=certs["fleet-console"]) as late:
        retained = await until(lambda: late.on(a_state), "the retained state")
        assert retained[0].body["online"] is True


async def test_a_stolen_client_id_does_not_take_over_the_session(broker, certs, site_a):
    connects = site_a.client.connects
    # site-b's certificate, claiming a's client id: the broker renames it to site-b.
    evt = topic("site-a", Channel.EVT)
    with (
        peer(broker, [], cert=certs["site-b"], client_id="site-a"),
        peer(broker, [evt], cert=certs["fleet-console"]) as fleet,
    ):
        seq = site_a.client.store.append_event(Event(EventKind.FAILOVER, time.time(), {}))
        await until(lambda: fleet.on(evt), "a's event")
        assert fleet.on(evt)[-1].body["seq"] == seq
    assert site_a.client.connected and site_a.client.connects == connects  # never kicked


async def test_the_notifier_identity_reads_events_by_shared_subscription(broker, certs, site_a):
    evt = topic("site-a", Channel.EVT)
    with peer(broker, ["$share/notifier/cpe/v1/+/evt"], cert=certs["fleet-notifier"]) as n:
        seq = site_a.client.store.append_event(Event(EventKind.FAILBACK, time.time(), {}))
        await until(lambda: [m for m in n.on(evt) if m.body["seq"] == seq], "the event")
        # It may read, never command.
        n.publish(topic("site-a", Channel.CMD_REQ), command("n-1", "not allowed"))
        with peer(broker, [topic("site-a", Channel.CMD_RES)], cert=certs["fleet-console"]) as f:
            f.publish(topic("site-a", Channel.CMD_REQ), command("f-1", "allowed"))
            await until(lambda: f.on(topic("site-a", Channel.CMD_RES)), "the answer")
        assert site_a.resets == ["allowed"]


async def test_untrusted_certificates_are_refused_and_backed_off(broker, tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="agent.telemetry.mqtt")
    # A certificate from another CA: the broker refuses it during the handshake.
    stranger = Mosquitto(tmp_path / "other", tls=True)
    assert stranger.tls_files is not None
    foreign = (stranger.tls_files.client_cert, stranger.tls_files.client_key)
    store = Store(tmp_path / "x.db")
    client = TelemetryClient(device_settings(broker, foreign), "site-a", store, options=FAST)
    stop = asyncio.Event()
    task = asyncio.create_task(client.run(stop))
    try:
        # Under TLS 1.3 the refusal comes after the handshake: as a TLS alert (at once
        # the long wait) or, if the broker's close wins the race, as a closed connection
        # (the long wait after `closed_before_connack_limit` of them in a row).
        await until(
            lambda: client.last_wait is not None and client.last_wait[1] == "auth",
            "the long back-off",
            timeout_s=10,
        )
        assert client.last_wait is not None
        delay_s, why = client.last_wait
        assert why == "auth" and 15.0 <= delay_s <= 30.0  # the long back-off, jittered
        assert not client.connected and client.connects == 0
        assert any("refused the connection" in r.getMessage() for r in caplog.records)
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
        store.close()
