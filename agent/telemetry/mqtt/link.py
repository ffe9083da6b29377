"""One network connection of the device's client: build it, connect, serve it (the
outbox's events, telemetry, the birth), close it; and paho's callbacks for it.

`LinkWork` is the half of `TelemetryClient` (device.py) that works on one `Link`; the
client holds the state and decides when to connect again. Events are never queued
inside paho across connections: the SQLite outbox is the only queue, and every new
connection resends what the broker has not acknowledged, oldest first. The callbacks
run in paho's thread and only hand facts to the asyncio loop with
`call_soon_threadsafe`; all state is read and written on the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from agent.clock import Clock
from agent.config import MqttSection
from agent.store import StoreError
from agent.telemetry import contract
from agent.telemetry.contract import Channel
from agent.telemetry.mqtt.backoff import Refused, is_tls_refusal
from agent.telemetry.mqtt.options import MqttOptions, Uplink
from agent.telemetry.mqtt.transport import DeviceHandlers, DeviceTransport
from agent.telemetry.outbox import Outbox
from agent.telemetry.schedule import TelemetrySchedule
from agent.telemetry.wire import WireMeter
from drivers import aio

log = logging.getLogger(__name__)

#: How long to wait for paho's thread to end after DISCONNECT before shutting its socket.
JOIN_TIMEOUT_S = 2.0
#: Packets larger than this are not sent to us (MQTT 5 Maximum Packet Size).
MAX_INCOMING_PACKET = 65_536

MessageSink = Callable[[Channel, bytes, bool], None]


@dataclass(eq=False)
class Link:
    """One network connection: one paho client and its thread; discarded when it ends."""

    transport: DeviceTransport
    #: None when the broker accepted; (reason, code) when it refused or closed first.
    connack: asyncio.Future[tuple[Any, ...] | None]
    protocol: str
    keepalive_s: int
    #: paho message id -> event seq, or a callback(acknowledged, reason) for replies.
    mids: dict[int, int | Callable[[bool, str], None]] = field(default_factory=dict)
    up: bool = False
    closing: bool = False
    #: Leave at once and connect again (the uplink changed).
    rotate: bool = False
    connected_at_s: float | None = None
    #: A TLS alert paho met while reading (TLS 1.3 refuses a client certificate after
    #: the handshake, so the refusal shows only here).
    tls_alert: str | None = None


class LinkWork:
    """Connect, serve and close one `Link`; the state is `TelemetryClient`'s."""

    settings: MqttSection
    device_id: str
    clock: Clock
    options: MqttOptions
    outbox: Outbox
    wire: WireMeter
    bytes_sent: int
    bytes_by_channel: dict[Channel, int]
    connects: int
    protocol: str | None
    _rng: random.Random
    _network_hook: Callable[[str], None] | None
    _password: str | None
    _tls: ssl.SSLContext | None
    _topics: dict[Channel, str]
    _state: contract.StatePayload
    _link: Link | None
    _loop: asyncio.AbstractEventLoop | None
    _wake: asyncio.Event
    _uplink: Uplink
    _schedule: TelemetrySchedule
    _sink: MessageSink | None
    _connect_listeners: list[Callable[[], None]]

    @property
    def client_id(self) -> str:
        """The device id: broker ACLs can then pattern on it (`cpe/v1/%c/#`)."""
        return self.device_id

    def keepalive_for(self, uplink: Uplink) -> int:
        o = self.options
        return o.keepalive_cellular_s if uplink == "cellular" else o.keepalive_s

    def _new_link(self, loop: asyncio.AbstractEventLoop, protocol: str) -> Link:
        transport = DeviceTransport(
            client_id=self.client_id,
            v5=protocol == "5",
            wire=self.wire,
            connect_timeout_s=self.options.connect_timeout_s,
            tls=self._tls,
            username=self.settings.username,
            password=self._password,
            will_topic=self._topics[Channel.STATE],
            will_payload=contract.OFFLINE_STATE.to_json(),
            will_delay_s=self.options.will_delay_s,
        )
        link = Link(transport, loop.create_future(), protocol, self.keepalive_for(self._uplink))
        handlers = DeviceHandlers(
            connack=functools.partial(self._thread_connect, link),
            disconnect=functools.partial(self._thread_disconnect, link),
            publish=functools.partial(self._thread_publish, link),
            message=functools.partial(self._thread_message, link),
            socket_close=self._thread_socket_close,
            log=functools.partial(self._thread_log, link),
        )
        transport.bind(handlers, self._network_hook)
        return link

    async def _connect(self, link: Link, stop_waiter: asyncio.Task[Any]) -> None:
        s = self.settings
        assert s.host is not None
        self._link = link
        try:
            await asyncio.to_thread(
                link.transport.connect,
                s.host,
                s.port,
                link.keepalive_s,
                session_expiry_s=self.options.session_expiry_s,
                max_packet=MAX_INCOMING_PACKET,
            )
        except BaseException:
            self.wire.finish()  # TCP up, TLS refused: those bytes count too
            raise
        link.transport.start()
        await asyncio.wait(
            {link.connack, stop_waiter},
            timeout=self.options.connect_timeout_s,
            return_when=asyncio.FIRST_COMPLETED,
        )
        if stop_waiter.done() and not link.connack.done():
            return
        if not link.connack.done():
            raise TimeoutError(f"no CONNACK within {self.options.connect_timeout_s:.0f} s")
        refusal = link.connack.result()
        if refusal is not None:
            raise Refused(*refusal)

    async def _serve(self, link: Link, stop: asyncio.Event) -> None:
        self.connects += 1
        self.protocol = link.protocol
        log.info(
            "connected to the MQTT broker %s:%s as %s (MQTT %s, keepalive %d s, via %s)",
            self.settings.host,
            self.settings.port,
            self.client_id,
            link.protocol,
            link.keepalive_s,
            self._uplink,
        )
        self._commit()
        self.outbox.begin_session()
        self._publish(link, Channel.STATE, self._state.to_json())
        if self._sink is not None:
            link.transport.subscribe([self._topics[c] for c in contract.DEVICE_SUBSCRIBES])
        for listener in list(self._connect_listeners):
            try:
                listener()
            except Exception:
                log.exception("an MQTT connect listener failed")
        rounds = 0
        while link.up and not stop.is_set() and not link.rotate:
            self._wake.clear()
            self._commit()
            self._fill(link)
            self._flush_telemetry()
            self.wire.sample()
            rounds += 1
            if rounds % 100 == 0:
                self._enforce_bounds()
            age_s = self.outbox.oldest_inflight_age_s(self.clock.monotonic())
            if age_s is not None and age_s > self.options.ack_timeout_s:
                log.warning("no PUBACK for %.0f s; reconnecting to resend the events", age_s)
                return
            timeout_s = self.options.poll_s
            now_s = self.clock.monotonic()
            due_s = self._schedule.next_due_s(now_s, cellular=self._uplink == "cellular")
            if due_s is not None:
                timeout_s = min(timeout_s, max(0.01, due_s - now_s))
            # Not asyncio.wait_for: on 3.11 a cancel that came with a wake-up was lost and
            # a cancelled client served on until `stop` (drivers.aio).
            with contextlib.suppress(TimeoutError):
                await aio.wait_for(self._wake.wait(), timeout_s)

    def _fill(self, link: Link) -> None:
        room = self.options.window - self.outbox.inflight
        try:
            batch = self.outbox.take(room)
        except StoreError as exc:
            log.error("cannot read the event outbox (%s); retrying", exc)
            return
        for stored in batch:
            payload = self.outbox.payload(stored, self.clock.wall())
            mid = self._publish(link, Channel.EVT, payload)
            if mid is None:
                return  # the rest goes at the next connection
            link.mids[mid] = stored.seq
            self.outbox.sent(stored.seq, self.clock.monotonic())

    def _flush_telemetry(self) -> bool:
        link = self._link
        if link is None or not link.up:
            return False
        now_s = self.clock.monotonic()
        due = self._schedule.due(now_s, cellular=self._uplink == "cellular")
        if due is None:
            return False
        message = contract.telemetry_batch(due.samples, due.dropped)
        if self._publish(link, Channel.TELE, message.to_json()) is None:
            return False
        self._schedule.sent(due, now_s)
        return True

    def _publish(self, link: Link, channel: Channel, payload: bytes) -> int | None:
        """Hand a message to the connection: its message id, or None if refused."""
        topic = self._topics[channel]
        mid = link.transport.publish(
            topic, payload, qos=contract.QOS[channel], retain=contract.RETAIN[channel]
        )
        if mid is None:
            return None
        size = len(topic.encode()) + len(payload)
        self.bytes_sent += size
        self.bytes_by_channel[channel] += size
        return mid

    async def _close(self, link: Link, *, drain: bool) -> None:
        if drain and link.up:
            await self._drain(link)
        if drain and link.up and link.protocol == "3.1.1":
            # No will delay in 3.1.1 and a normal DISCONNECT discards the will: say it.
            self._publish(link, Channel.STATE, contract.OFFLINE_STATE.to_json())
        link.closing = True
        link.up = False
        if self._link is link:
            self._link = None
        link.transport.disconnect()
        joiner = asyncio.ensure_future(asyncio.to_thread(link.transport.join))
        done, _ = await asyncio.wait({joiner}, timeout=JOIN_TIMEOUT_S)
        if not done:
            # DISCONNECT could not be written (a stalled peer): end the thread's socket.
            link.transport.shutdown_socket()
            await joiner
        self.wire.finish()
        self._fail_replies(link)
        self._commit()

    def _fail_replies(self, link: Link) -> None:
        """Replies still waiting for a PUBACK will not get one: tell their senders."""
        for target in list(link.mids.values()):
            if callable(target):
                with contextlib.suppress(Exception):
                    target(False, "connection closed")
        link.mids.clear()

    async def _drain(self, link: Link) -> None:
        """Give outstanding PUBACKs a moment, so the next start resends less."""
        deadline_s = self.clock.monotonic() + self.options.drain_on_stop_s
        while link.up and (self.outbox.inflight or any(callable(t) for t in link.mids.values())):
            remaining_s = deadline_s - self.clock.monotonic()
            if remaining_s <= 0:
                return
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), remaining_s)

    def _commit(self) -> None:
        try:
            self.outbox.commit()
        except StoreError as exc:
            log.error("cannot record acknowledged events (%s); they will be sent again", exc)

    def _enforce_bounds(self) -> None:
        try:
            self.outbox.enforce_bounds(self.clock.wall())
        except StoreError as exc:
            log.error("cannot prune the event outbox (%s)", exc)

    # -- paho's network thread -----------------------------------------------------------

    def _post(self, handler: Callable[..., None], *args: Any) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(handler, *args)

    def _thread_connect(self, link: Link, code: int | None, reason: str) -> None:
        self._post(self._on_connack, link, code, reason)

    def _thread_disconnect(self, link: Link, reason: str) -> None:
        self._post(self._on_disconnect, link, reason)

    def _thread_publish(self, link: Link, mid: int, failed: bool, reason: str) -> None:
        self._post(self._on_publish, link, mid, failed, reason)

    def _thread_message(self, link: Link, topic: str, payload: bytes, retain: bool) -> None:
        self._post(self._on_message, link, topic, payload, retain)

    def _thread_log(self, link: Link, text: str) -> None:
        if is_tls_refusal(text):
            link.tls_alert = text

    def _thread_socket_close(self) -> None:
        self.wire.finish()  # just before paho closes it: the last reading

    # -- the same facts, on the asyncio loop -----------------------------------------------

    def _on_connack(self, link: Link, code: int | None, reason: str) -> None:
        if link.connack.done():
            return
        if code is not None:
            link.connack.set_result((reason, code))
            return
        link.up = not link.closing
        link.connected_at_s = self.clock.monotonic()
        link.connack.set_result(None)

    def _on_disconnect(self, link: Link, reason: str) -> None:
        was_up = link.up
        link.up = False
        if not link.connack.done():
            if link.tls_alert is not None:
                alert = link.tls_alert.split(": ", 1)[-1]
                link.connack.set_result((f"TLS refused: {alert}", None, True))
            else:
                link.connack.set_result((f"the connection closed before CONNACK: {reason}", None))
        if was_up and not link.closing:
            log.warning("lost the MQTT connection (%s)", reason)
        self._wake.set()

    def _on_publish(self, link: Link, mid: int, failed: bool, reason: str) -> None:
        target = link.mids.pop(mid, None)
        if target is None:
            if failed:
                log.error("the MQTT broker refused a state message (%s)", reason)
            return
        if callable(target):
            try:
                target(not failed, reason)
            except Exception:
                log.exception("a reply acknowledgement handler failed")
            return
        seq = target
        if failed:
            log.error(
                "the MQTT broker refused event %d (%s); it stays queued for the next connection",
                seq,
                reason,
            )
            self.outbox.rejected(seq)
        else:
            self.outbox.acked(seq)
        self._wake.set()

    def _on_message(self, link: Link, topic: str, payload: bytes, retain: bool) -> None:
        try:
            device_id, channel = contract.parse_topic(topic)
        except contract.ContractError:
            log.warning("ignored an MQTT message on %r: not a topic of the contract", topic)
            return
        if device_id != self.device_id or channel not in contract.DEVICE_SUBSCRIBES:
            log.warning("ignored an MQTT message on %s: not this device's to read", topic)
            return
        if self._sink is not None:
            self._sink(channel, payload, retain)
