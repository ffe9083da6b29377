"""The fleet side of the contract (notifier, console): one MQTT 5 subscriber that hands
each message to a handler on the asyncio loop, acknowledged once it is handled."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from agent.config import MqttSection
from agent.telemetry.mqtt.options import TelemetryError, read_password, tls_context
from agent.telemetry.mqtt.transport import FleetTransport

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Delivery:
    """One message the fleet side received; `ack()` it once it is safely handled (QoS 1)."""

    topic: str
    payload: bytes
    retain: bool
    qos: int
    mid: int
    ack: Callable[[], None]


class FleetClient:
    """The provider's side of the contract (notifier, console): one MQTT 5 connection
    that subscribes to `subscriptions` (shared ones welcome) and hands each message to
    `handler` on the asyncio loop, in order.

    With `manual_ack` a QoS 1 message is acknowledged only when the handler calls
    `delivery.ack()`, so a message the handler could not record is delivered again
    after a reconnect. paho's own reconnect is used here (a server, not a site on LTE).
    """

    def __init__(
        self,
        settings: MqttSection,
        client_id: str,
        subscriptions: Iterable[str],
        handler: Callable[[Delivery], Awaitable[None] | None],
        *,
        manual_ack: bool = True,
        session_expiry_s: int = 86_400,
        clean_start: bool = False,
    ) -> None:
        if not settings.host:
            raise TelemetryError("the fleet's MQTT host is not set; set [mqtt] host.")
        self.settings = settings
        self.client_id = client_id or f"fleet-{uuid.uuid4().hex[:8]}"
        self.subscriptions = list(subscriptions)
        self.handler = handler
        self.manual_ack = manual_ack
        self.session_expiry_s = session_expiry_s
        self.clean_start = clean_start
        self._password = read_password(settings)
        self._tls = tls_context(settings) if settings.tls else None
        self._queue: asyncio.Queue[Delivery] = asyncio.Queue()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: FleetTransport | None = None
        #: Set when the broker acknowledged the subscriptions (each connect sets it again).
        self.subscribed = asyncio.Event()
        self.connects = 0

    @property
    def connected(self) -> bool:
        return self._client is not None and self._client.is_connected()

    async def run(self, stop: asyncio.Event) -> None:
        self._loop = asyncio.get_running_loop()
        client = FleetTransport(
            client_id=self.client_id,
            manual_ack=self.manual_ack,
            tls=self._tls,
            username=self.settings.username,
            password=self._password,
        )
        client.bind(
            connect=self._thread_connect,
            subscribe=self._thread_subscribe,
            message=self._thread_message,
        )
        self._client = client
        assert self.settings.host is not None
        client.connect_async(
            self.settings.host,
            self.settings.port,
            self.settings.keepalive_s,
            clean_start=self.clean_start,
            session_expiry_s=self.session_expiry_s,
        )
        client.start()
        consumer = asyncio.create_task(self._consume(), name="fleet-mqtt-consumer")
        try:
            await stop.wait()
        finally:
            consumer.cancel()
            await asyncio.gather(consumer, return_exceptions=True)
            client.disconnect()
            await asyncio.to_thread(client.join)
            self._client = None

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> bool:
        """Send a command or a desired config; True if handed to the connection."""
        client = self._client
        if client is None or not client.is_connected():
            return False
        return client.publish(topic, payload, qos=qos, retain=retain)

    async def _consume(self) -> None:
        while True:
            delivery = await self._queue.get()
            try:
                result = self.handler(delivery)
                if asyncio.iscoroutine(result):
                    await result
            except Exception:
                log.exception("the fleet handler failed on %s; not acknowledged", delivery.topic)

    # -- paho's network thread -----------------------------------------------------------

    def _thread_connect(self, failed: bool, reason: str) -> None:
        if failed:
            log.warning("the MQTT broker refused the fleet client (%s)", reason)
            return
        self.connects += 1
        client = self._client
        if self.subscriptions and client is not None:
            client.subscribe(self.subscriptions)

    def _thread_subscribe(self, refused: list[str]) -> None:
        if refused:
            log.error("the MQTT broker refused fleet subscriptions: %s", ", ".join(refused))
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self.subscribed.set)

    def _thread_message(
        self,
        topic: str,
        payload: bytes,
        retain: bool,
        qos: int,
        mid: int,
        transport_ack: Callable[[], None],
    ) -> None:
        def ack() -> None:
            if self.manual_ack and qos > 0:
                transport_ack()

        delivery = Delivery(topic, payload, retain, qos, mid, ack)
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._queue.put_nowait, delivery)
