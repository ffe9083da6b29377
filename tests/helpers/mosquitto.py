"""The mosquitto broker for tests: the `mosquitto` fixture, and MQTT peers.

The broker runner itself (`Mosquitto`, its certificates, `TcpRelay`, `free_port`) is a
lab part in `hil/sims/mosquitto.py`; it is re-exported here so tests import everything
MQTT from one place. Use the `mosquitto` fixture (plain listener), or `Mosquitto(workdir,
...)` directly for options (TLS, ACLs, persistence: see `hil.sims.mosquitto`).

To use the fixture from another test module: `from tests.helpers.mosquitto import
mosquitto` and take `mosquitto` as an argument (ruff knows the pattern), or import
`Mosquitto` and build your own fixture.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from hil.sims.mosquitto import (
    DEVICE_ACL,
    MOSQUITTO,
    OPENSSL,
    START_TIMEOUT_S,
    STOP_TIMEOUT_S,
    Mosquitto,
    TcpRelay,
    TlsFiles,
    free_port,
    issue_client_cert,
    make_tls_files,
)

__all__ = [
    "DEVICE_ACL",
    "MOSQUITTO",
    "OPENSSL",
    "START_TIMEOUT_S",
    "STOP_TIMEOUT_S",
    "Message",
    "Mosquitto",
    "Peer",
    "TcpRelay",
    "TlsFiles",
    "free_port",
    "issue_client_cert",
    "make_tls_files",
    "mosquitto",
    "peer",
    "until",
]


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    """A running broker with a plain listener on 127.0.0.1:<free port>."""
    broker = Mosquitto(tmp_path / "mosquitto")
    try:
        broker.start()
        yield broker
    finally:
        broker.close()


# -- MQTT peers for tests: the fleet side, or an intruder ---------------------------------


async def until(check: Callable[[], Any], what: str, timeout_s: float = 5.0) -> Any:
    """Poll `check` until it is truthy (returned), or fail after `timeout_s` saying `what`."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.01)


@dataclass(frozen=True)
class Message:
    topic: str
    raw: bytes
    retain: bool

    @property
    def body(self) -> Any:
        return json.loads(self.raw) if self.raw else None


class Peer:
    """A paho MQTT 5 client in its own thread that records what it receives.

    With `cert` it connects to the broker's TLS listener with that client certificate
    (its identity under an ACL); else to the plain listener.
    """

    def __init__(
        self,
        broker: Mosquitto,
        topics: list[str],
        *,
        cert: tuple[Path, Path] | None = None,
        client_id: str | None = None,
        wait_subscribed: bool = True,
    ) -> None:
        self.messages: list[Message] = []
        self.refused_subscriptions: list[str] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or f"peer-{uuid.uuid4().hex[:8]}",
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        self.client.reconnect_delay_set(1, 1)
        port = broker.port
        if cert is not None:
            assert broker.tls_files is not None and broker.tls_port is not None
            self.client.tls_set(str(broker.tls_files.ca_file), str(cert[0]), str(cert[1]))
            port = broker.tls_port

        def on_connect(client: paho.Client, *_: Any) -> None:
            if topics:
                client.subscribe([(t, 1) for t in topics])
            else:
                self._subscribed.set()

        def on_subscribe(_c: Any, _u: Any, _mid: Any, codes: Any, _p: Any) -> None:
            self.refused_subscriptions += [str(c) for c in codes if c.is_failure]
            self._subscribed.set()

        def on_message(_client: Any, _userdata: Any, message: paho.MQTTMessage) -> None:
            with self._lock:
                self.messages.append(Message(message.topic, message.payload, message.retain))

        self.client.on_connect = on_connect
        self.client.on_subscribe = on_subscribe
        self.client.on_message = on_message
        self.client.connect(broker.host, port, keepalive=10)
        self.client.loop_start()
        if wait_subscribed:
            assert self._subscribed.wait(5), "the test peer could not subscribe"

    def on(self, name: str) -> list[Message]:
        with self._lock:
            return [m for m in self.messages if m.topic == name]

    def all(self) -> list[Message]:
        with self._lock:
            return list(self.messages)

    def publish(self, topic: str, payload: bytes | str, *, retain: bool = False) -> None:
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(5)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@contextlib.contextmanager
def peer(broker: Mosquitto, topics: list[str], **kwargs: Any) -> Iterator[Peer]:
    p = Peer(broker, topics, **kwargs)
    try:
        yield p
    finally:
        p.close()
