"""paho, and only here (DESIGN rule 2): the clients, their TLS and credentials, and
their callbacks, turned into plain values before anything of ours sees them.

- `DeviceTransport`: one paho client, one network connection of the device. paho's
  own reconnect is off (the device's loop decides when to retry); every new TCP
  socket is shown to the `WireMeter` before TLS wraps it; MQTT 5 with a delayed
  retained will, or 3.1.1; a planned stop disconnects with reason 0x04 "disconnect
  with will message".
- `FleetTransport`: the fleet side's MQTT 5 client, with paho's reconnect and manual
  acknowledgements.
- paho's network thread (`loop_start`) runs the callbacks. Each is guarded (`_guard`:
  an exception there would silently end that thread); the handlers they call only
  hand facts to the asyncio loop.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from agent.telemetry.wire import WireMeter

log = logging.getLogger(__name__)


class _PahoNoise(logging.Filter):
    """paho 2.2 logs an ERROR when its thread ends after a disconnect; that is normal."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Client is not connected")


#: paho's own log (the benchmark listens here to count keepalives).
paho_log = logging.getLogger("agent.telemetry.mqtt.paho")
paho_log.addFilter(_PahoNoise())

DISCONNECT_WITH_WILL = ReasonCode(PacketTypes.DISCONNECT, "Disconnect with will message")


class _MeteredClient(paho.Client):
    """A paho client that shows each new TCP socket to a WireMeter before TLS wraps it."""

    wire: WireMeter | None = None

    def _create_socket_connection(self) -> socket.socket:
        sock = super()._create_socket_connection()
        if self.wire is not None:
            self.wire.watch(sock)
        return sock


def _guard(
    name: str, handler: Callable[..., None], hook: Callable[[str], None] | None = None
) -> Callable[..., None]:
    """Never let an exception escape into paho: it would end its network thread."""

    def callback(*args: Any) -> None:
        try:
            if hook is not None:
                hook(name)
            handler(*args)
        except Exception:
            log.exception("the MQTT %s callback failed; the network thread carries on", name)

    return callback


def _configure(
    client: paho.Client, tls: ssl.SSLContext | None, username: str | None, password: str | None
) -> None:
    # Our guards catch everything; this is the second belt should one of them not.
    client.suppress_exceptions = True
    client.enable_logger(paho_log)
    if tls is not None:
        client.tls_set_context(tls)
    if username:
        client.username_pw_set(username, password)


@dataclass(frozen=True)
class DeviceHandlers:
    """What the device hears from its connection, in paho's thread, as plain values."""

    #: (None, reason) when the broker accepted; (code, reason) when it refused.
    connack: Callable[[int | None, str], None]
    disconnect: Callable[[str], None]
    #: (message id, failed, reason) for each PUBACK.
    publish: Callable[[int, bool, str], None]
    #: (topic, payload, retain).
    message: Callable[[str, bytes, bool], None]
    #: Just before paho closes the socket.
    socket_close: Callable[[], None]
    #: Each line of paho's log (TLS alerts show only there).
    log: Callable[[str], None]


class DeviceTransport:
    """One paho client and its network thread for one connection of the device."""

    def __init__(
        self,
        *,
        client_id: str,
        v5: bool,
        wire: WireMeter,
        connect_timeout_s: float,
        tls: ssl.SSLContext | None,
        username: str | None,
        password: str | None,
        will_topic: str,
        will_payload: bytes,
        will_delay_s: int,
    ) -> None:
        self.v5 = v5
        client = _MeteredClient(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311,
            clean_session=None if v5 else False,
            reconnect_on_failure=False,
        )
        client.wire = wire
        _configure(client, tls, username, password)
        client.connect_timeout = connect_timeout_s
        will: Properties | None = None
        if v5:
            will = Properties(PacketTypes.WILLMESSAGE)
            will.WillDelayInterval = will_delay_s
        client.will_set(will_topic, will_payload, qos=1, retain=True, properties=will)
        self._client = client

    def bind(self, handlers: DeviceHandlers, hook: Callable[[str], None] | None = None) -> None:
        """Route paho's callbacks to `handlers`; `hook(name)` runs first (tests)."""
        h = handlers

        def on_connect(_c: Any, _u: Any, _flags: Any, reason: Any, _props: Any) -> None:
            h.connack(int(reason.value) if reason.is_failure else None, str(reason))

        def on_disconnect(_c: Any, _u: Any, _flags: Any, reason: Any, _props: Any) -> None:
            h.disconnect(str(reason))

        def on_publish(_c: Any, _u: Any, mid: int, reason: Any, _props: Any) -> None:
            h.publish(mid, bool(reason.is_failure), str(reason))

        def on_message(_c: Any, _u: Any, message: paho.MQTTMessage) -> None:
            h.message(message.topic, bytes(message.payload), message.retain)

        def on_socket_close(_c: Any, _u: Any, _sock: Any) -> None:
            h.socket_close()

        def on_log(_c: Any, _u: Any, _level: int, text: str) -> None:
            h.log(text)

        client = self._client
        client.on_connect = _guard("connect", on_connect, hook)
        client.on_disconnect = _guard("disconnect", on_disconnect, hook)
        client.on_publish = _guard("publish", on_publish, hook)
        client.on_message = _guard("message", on_message, hook)
        client.on_socket_close = _guard("socket_close", on_socket_close, hook)
        client.on_log = _guard("log", on_log)

    def connect(
        self, host: str, port: int, keepalive_s: int, *, session_expiry_s: int, max_packet: int
    ) -> None:
        """TCP, TLS and CONNECT; blocks (run it in a thread). The CONNACK comes later."""
        properties: Properties | None = None
        if self.v5:
            properties = Properties(PacketTypes.CONNECT)
            properties.SessionExpiryInterval = session_expiry_s
            properties.MaximumPacketSize = max_packet
        self._client.connect(
            host,
            port,
            keepalive_s,
            clean_start=False if self.v5 else paho.MQTT_CLEAN_START_FIRST_ONLY,
            properties=properties,
        )

    def start(self) -> None:
        """Start paho's network thread."""
        self._client.loop_start()

    def join(self) -> None:
        """Wait for paho's network thread to end; blocks (run it in a thread)."""
        self._client.loop_stop()

    def publish(self, topic: str, payload: bytes, *, qos: int, retain: bool) -> int | None:
        """The message id, or None (said in the log) if paho would not take it."""
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            log.warning("cannot publish on %s: %s", topic, paho.error_string(info.rc))
            return None
        return info.mid

    def subscribe(self, topics: list[str]) -> None:
        self._client.subscribe([(t, 1) for t in topics])

    def disconnect(self) -> None:
        """MQTT 5: "disconnect with will message" (the broker keeps the delayed will);
        3.1.1: a normal DISCONNECT (which discards the will)."""
        if self.v5:
            self._client.disconnect(reasoncode=DISCONNECT_WITH_WILL)
        else:
            self._client.disconnect()

    def shutdown_socket(self) -> None:
        """End the network thread's socket (DISCONNECT could not be written)."""
        sock = self._client.socket()
        if isinstance(sock, socket.socket):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


class FleetTransport:
    """The fleet side's MQTT 5 client: paho's reconnect on, manual acks if asked."""

    def __init__(
        self,
        *,
        client_id: str,
        manual_ack: bool,
        tls: ssl.SSLContext | None,
        username: str | None,
        password: str | None,
    ) -> None:
        client = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=MQTTProtocolVersion.MQTTv5,
            manual_ack=manual_ack,
        )
        _configure(client, tls, username, password)
        client.reconnect_delay_set(1, 30)
        self._client = client

    def bind(
        self,
        *,
        connect: Callable[[bool, str], None],
        subscribe: Callable[[list[str]], None],
        message: Callable[[str, bytes, bool, int, int, Callable[[], None]], None],
    ) -> None:
        """`connect(failed, reason)`, `subscribe(refused reasons)` and `message(topic,
        payload, retain, qos, mid, ack)`, in paho's thread."""

        def on_connect(_c: Any, _u: Any, _flags: Any, reason: Any, _props: Any) -> None:
            connect(bool(reason.is_failure), str(reason))

        def on_subscribe(_c: Any, _u: Any, _mid: Any, codes: Any, _props: Any) -> None:
            subscribe([str(c) for c in codes if c.is_failure])

        def on_message(client: paho.Client, _u: Any, msg: paho.MQTTMessage) -> None:
            mid, qos = msg.mid, msg.qos

            def ack() -> None:
                client.ack(mid, qos)

            message(msg.topic, bytes(msg.payload), msg.retain, qos, mid, ack)

        self._client.on_connect = _guard("connect", on_connect)
        self._client.on_subscribe = _guard("subscribe", on_subscribe)
        self._client.on_message = _guard("message", on_message)

    def connect_async(
        self, host: str, port: int, keepalive_s: int, *, clean_start: bool, session_expiry_s: int
    ) -> None:
        properties = Properties(PacketTypes.CONNECT)
        properties.SessionExpiryInterval = session_expiry_s
        self._client.connect_async(
            host, port, keepalive_s, clean_start=clean_start, properties=properties
        )

    def start(self) -> None:
        self._client.loop_start()

    def join(self) -> None:
        self._client.loop_stop()

    def disconnect(self) -> None:
        self._client.disconnect()

    def is_connected(self) -> bool:
        return self._client.is_connected()

    def subscribe(self, topics: list[str]) -> None:
        self._client.subscribe([(t, 1) for t in topics])

    def publish(self, topic: str, payload: bytes, *, qos: int, retain: bool) -> bool:
        return self._client.publish(topic, payload, qos=qos, retain=retain).rc == 0
