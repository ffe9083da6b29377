"""The agent's MQTT client, and the fleet side's: the only module that imports paho.

Shape, and why:

- One paho `Client` per network connection (`_Link`), made by our own reconnect loop
  with exponential back-off and full jitter, so a fleet that lost its broker does not
  come back in one wave; a refused login or certificate waits `auth_backoff_s` (a
  wrong password does not fix itself, and a thousand sites retrying it every two
  minutes is an attack on the broker). paho's own reconnect is off: exactly one loop
  decides when to retry. Events are never queued inside paho across connections: the
  SQLite outbox is the only queue, and every new connection resends what the broker
  has not acknowledged, oldest first.
- paho's network thread (`loop_start`) runs the callbacks. Each is guarded (an
  exception there would silently end that thread) and only hands facts to the asyncio
  loop with `call_soon_threadsafe`; all state is read and written on the loop.
- MQTT 5, `clean_start=False` with a session expiry, a retained birth on `state` at
  every connect and a retained last will (`online: false`) with a will delay. A planned
  stop disconnects with reason 0x04 "disconnect with will message": the broker
  publishes the will only if the agent is not back within the delay, so a restart does
  not flap the site offline, while a stop that lasts does show. A broker that refuses
  MQTT 5 (CONNACK "unsupported protocol version") gets MQTT 3.1.1 (no will delay
  there: a planned stop publishes `online: false` itself).
- The uplink: `set_uplink("cellular")` when VoIP (and so the broker's route) moves to
  LTE. The connection is rebuilt at once (the old one cannot survive the new source
  address) with the long LTE keepalive; telemetry switches to changes-only, batched.
  Every byte of every connection is measured at the socket (`telemetry.wire`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import socket
import ssl
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Literal

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from agent.clock import Clock
from agent.config import MqttSection, read_secret
from agent.store import Store, StoreError
from agent.telemetry import contract
from agent.telemetry.contract import Channel
from agent.telemetry.outbox import Outbox
from agent.telemetry.schedule import TelemetryPolicy, TelemetrySchedule
from agent.telemetry.wire import WireMeter, WireTotals

log = logging.getLogger(__name__)


class _PahoNoise(logging.Filter):
    """paho 2.2 logs an ERROR when its thread ends after a disconnect; that is normal."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Client is not connected")


paho_log = logging.getLogger(f"{__name__}.paho")
paho_log.addFilter(_PahoNoise())

DISCONNECT_WITH_WILL = ReasonCode(PacketTypes.DISCONNECT, "Disconnect with will message")
#: How long to wait for paho's thread to end after DISCONNECT before shutting its socket.
JOIN_TIMEOUT_S = 2.0
#: CONNACK reason codes that say "who you are is not welcome" (MQTT 5; paho maps the
#: 3.1.1 return codes 4 and 5 onto 0x86 and 0x87).
AUTH_REFUSALS = frozenset({0x85, 0x86, 0x87, 0x8A, 0x8C})
UNSUPPORTED_PROTOCOL = 0x84
#: Packets larger than this are not sent to us (MQTT 5 Maximum Packet Size).
MAX_INCOMING_PACKET = 65_536
Uplink = Literal["primary", "cellular"]


@dataclass(frozen=True)
class MqttOptions:
    """The client's tunables: by default those of `[mqtt]` (`from_settings`), plus a few
    internals; tests pass their own to run fast."""

    #: After an unclean loss (or a stop) the broker waits this long before the will.
    will_delay_s: int = 60
    #: The broker keeps the session (and will delay) this long after a disconnect.
    session_expiry_s: int = 86_400
    reconnect_base_s: float = 2.0
    reconnect_max_s: float = 120.0
    #: After the broker refused the credentials or certificate (jittered 50-100%).
    auth_backoff_s: float = 900.0
    #: Connections in a row that the broker closed before CONNACK (a refused client
    #: certificate under TLS 1.3 looks like this) before waiting `auth_backoff_s`.
    closed_before_connack_limit: int = 3
    #: A connection that lasted this long starts the back-off from the beginning again.
    stable_after_s: float = 60.0
    connect_timeout_s: float = 15.0
    keepalive_s: int = 60
    keepalive_cellular_s: int = 1200
    protocol: Literal["auto", "5", "3.1.1"] = "auto"
    #: Events published and not yet acknowledged, at most.
    window: int = 10
    #: No PUBACK for this long: drop the connection and resend (the only resend MQTT allows).
    ack_timeout_s: float = 120.0
    #: Look at the store this often without a wake-up (events written by another process).
    poll_s: float = 5.0
    #: On stop, wait this long for outstanding PUBACKs before disconnecting.
    drain_on_stop_s: float = 2.0
    late_after_s: float = contract.LATE_AFTER_S
    heartbeat_s: float = 300.0
    heartbeat_cellular_s: float = 3600.0
    batch_cellular_s: float = 900.0
    min_tele_interval_s: float = 10.0

    @classmethod
    def from_settings(cls, settings: MqttSection, **overrides: Any) -> MqttOptions:
        mapped = {
            "will_delay_s": settings.will_delay_s,
            "session_expiry_s": settings.session_expiry_s,
            "reconnect_base_s": settings.reconnect_min_s,
            "reconnect_max_s": settings.reconnect_max_s,
            "auth_backoff_s": settings.auth_backoff_s,
            "keepalive_s": settings.keepalive_s,
            "keepalive_cellular_s": settings.keepalive_cellular_s,
            "protocol": settings.protocol,
            "ack_timeout_s": settings.ack_timeout_s,
            "heartbeat_s": settings.heartbeat_s,
            "heartbeat_cellular_s": settings.heartbeat_cellular_s,
            "batch_cellular_s": settings.batch_cellular_s,
        }
        return cls(**{**mapped, **overrides})

    def replace(self, **changes: Any) -> MqttOptions:
        return MqttOptions(**{**{f.name: getattr(self, f.name) for f in fields(self)}, **changes})


class TelemetryError(Exception):
    """The MQTT settings cannot be used (no host, unreadable certificate, key or password)."""


class _Refused(Exception):
    """The broker answered CONNECT with a failure reason code, or closed before CONNACK."""

    def __init__(self, reason: str, code: int | None, tls_alert: bool = False) -> None:
        super().__init__(reason)
        self.code = code
        self.tls_alert = tls_alert

    @property
    def kind(self) -> str:
        if self.tls_alert:
            return "auth"
        if self.code is None:
            return "closed"
        if self.code in AUTH_REFUSALS:
            return "auth"
        if self.code == UNSUPPORTED_PROTOCOL:
            return "protocol"
        return "other"


def backoff_delay_s(attempt: int, base_s: float, max_s: float, rand: float) -> float:
    """Full jitter: uniform between base/4 and min(max, base * 2**attempt); `rand` in [0, 1)."""
    ceiling = min(max_s, base_s * 2 ** min(attempt, 30))
    floor = min(base_s / 4, ceiling)
    return floor + (ceiling - floor) * rand


_TLS_REFUSALS = ("alert unknown ca", "bad certificate", "certificate required",
                 "certificate unknown", "certificate expired", "certificate revoked",
                 "access denied")  # fmt: skip


def _is_auth_tls_error(exc: BaseException) -> bool:
    """TLS failures that retrying soon will not fix: trust, or our certificate refused."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return True
    text = str(exc).lower()
    return isinstance(exc, ssl.SSLError) and any(word in text for word in _TLS_REFUSALS)


def _read_password(settings: MqttSection) -> str | None:
    try:
        return read_secret(settings.password, settings.password_file)
    except OSError as exc:
        raise TelemetryError(
            f"cannot read [mqtt] password_file {settings.password_file} "
            f"({exc.strerror}); create it or fix its permissions."
        ) from exc


def _tls_context(s: MqttSection) -> ssl.SSLContext:
    """TLS 1.2+, the broker checked against `ca_file` (pinned) or the system CAs."""
    if s.key_file is not None and s.cert_file is None:
        raise TelemetryError("[mqtt] key_file is set without cert_file; set both or neither.")
    try:
        context = ssl.create_default_context(cafile=str(s.ca_file) if s.ca_file else None)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if s.cert_file is not None:
            context.load_cert_chain(s.cert_file, s.key_file)
    except OSError as exc:  # ssl.SSLError is an OSError
        raise TelemetryError(
            f"cannot use the MQTT TLS files ({exc}); check [mqtt] ca_file, cert_file and key_file."
        ) from exc
    return context


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


@dataclass(eq=False)
class _Link:
    """One network connection: one paho client and its thread; discarded when it ends."""

    client: paho.Client
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


MessageSink = Callable[[Channel, bytes, bool], None]


class TelemetryClient:
    """Publishes the state, the outbox's events and link telemetry; reconnects by itself;
    receives the fleet's commands and desired config for a `MessageSink`.

    Use from one asyncio loop: `await run(stop)` in a task; the other methods from the
    same loop at any time (they never block).
    """

    def __init__(
        self,
        settings: MqttSection,
        device_id: str,
        store: Store,
        clock: Clock | None = None,
        options: MqttOptions | None = None,
        *,
        rng: random.Random | None = None,
        network_hook: Callable[[str], None] | None = None,
    ) -> None:
        if not settings.host:
            raise TelemetryError("[mqtt] host is not set: telemetry is off; set it to report.")
        self.settings = settings
        self.device_id = contract.check_device_id(device_id)
        self.store = store
        self.clock = clock or Clock()
        self.options = options or MqttOptions.from_settings(settings)
        self.outbox = Outbox(store, late_after_s=self.options.late_after_s)
        self._rng = rng or random.Random()
        #: Called in paho's network thread at each callback, by name; tests and diagnostics.
        self._network_hook = network_hook
        self._password = _read_password(settings)
        self._tls = _tls_context(settings) if settings.tls else None
        self._topics = {channel: contract.topic(device_id, channel) for channel in Channel}
        self._state = contract.online_state({})
        self._link: _Link | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake = asyncio.Event()
        self._uplink: Uplink = "primary"
        self._schedule = TelemetrySchedule(
            TelemetryPolicy(
                heartbeat_s=self.options.heartbeat_s,
                heartbeat_cellular_s=self.options.heartbeat_cellular_s,
                batch_cellular_s=self.options.batch_cellular_s,
                min_interval_s=self.options.min_tele_interval_s,
            )
        )
        self._sink: MessageSink | None = None
        self._connect_listeners: list[Callable[[], None]] = []
        self._started_s = self.clock.monotonic()
        #: Bytes on the wire (IP + TCP + TLS + MQTT) per uplink, measured at the socket.
        self.wire = WireMeter()
        #: Topic + payload bytes handed to the broker connection (retransmits included).
        self.bytes_sent = 0
        self.bytes_by_channel: dict[Channel, int] = dict.fromkeys(Channel, 0)
        self.connects = 0
        #: "5" or "3.1.1" once a broker accepted; None before.
        self.protocol: str | None = None
        #: The last reconnect wait and why ("backoff", "auth", "protocol", "uplink").
        self.last_wait: tuple[float, str] | None = None

    # -- settings ----------------------------------------------------------------------

    @property
    def client_id(self) -> str:
        """The device id: broker ACLs can then pattern on it (`cpe/v1/%c/#`)."""
        return self.device_id

    @property
    def connected(self) -> bool:
        return self._link is not None and self._link.up

    @property
    def uplink(self) -> Uplink:
        return self._uplink

    def keepalive_for(self, uplink: Uplink) -> int:
        o = self.options
        return o.keepalive_cellular_s if uplink == "cellular" else o.keepalive_s

    # -- what the agent calls ------------------------------------------------------------

    def publish_state(self, state: Mapping[str, Any]) -> bool:
        """Set the state (`mode`, `since`); published retained now if connected, and as
        the birth message on every connect. True if it went to the broker connection."""
        self._state = contract.online_state(state)
        link = self._link
        if link is None or not link.up:
            return False
        return self._publish(link, Channel.STATE, self._state.to_json()) is not None

    def publish_telemetry(self, telemetry: Mapping[str, Any]) -> bool:
        """Offer a sample (`links`, `mode`, `signal`, `usage`, `agent`, `wall_time_s`).

        Call it as often as you like (every 10-60 s): it goes out only on a material
        change or a heartbeat; on LTE, changes are batched. True if a message went now.
        """
        parts = dict(telemetry)
        wall_s = parts.pop("wall_time_s", None)
        parts["agent"] = {**self.health(), **(parts.get("agent") or {})}
        sample = contract.telemetry_sample(
            wall_time_s=wall_s if wall_s is not None else self.clock.wall(), **parts
        )
        self._schedule.offer(sample, self.clock.monotonic())
        return self._flush_telemetry()

    def health(self) -> dict[str, Any]:
        """The client's share of the agent's health figures (for `tele`)."""
        figures: dict[str, Any] = {
            "uptime_s": round(self.clock.monotonic() - self._started_s),
            "mqtt_lte_bytes": self.wire_totals().cellular,
            "mqtt": self.protocol,
        }
        with contextlib.suppress(StoreError):
            figures["backlog"] = self.outbox.backlog()
            figures["events_dropped"] = self.outbox.events_dropped
        return figures

    def set_uplink(self, uplink: Uplink) -> None:
        """The broker's route now leaves by `uplink` (call on every VoIP path change).

        The current connection, built on the other link, is replaced at once (with
        the delayed will, so nothing flaps) using that link's keepalive.
        """
        if uplink not in ("primary", "cellular"):
            raise ValueError(f"uplink must be 'primary' or 'cellular', not {uplink!r}")
        if uplink == self._uplink:
            return
        self._uplink = uplink
        self.wire.set_uplink(uplink)
        link = self._link
        if link is not None and not link.closing:
            link.rotate = True
            self._wake.set()

    def set_minimum_telemetry(self, on: bool) -> None:
        """Only the heartbeat, no change messages (the meter says the plan's cap is near).

        State and events still go: they are what the provider must hear.
        """
        self._schedule.minimum = on

    def wire_totals(self) -> WireTotals:
        """Bytes on the wire per uplink since the start (the meter takes deltas)."""
        self.wire.sample()
        return self.wire.totals

    @property
    def lte_wire_bytes(self) -> int:
        """The agent's own MQTT bytes on LTE since it started, both ways, on the wire."""
        return self.wire_totals().cellular

    def wake(self) -> None:
        """Look at the outbox now (after a replay queued events again)."""
        self._wake.set()

    def set_message_sink(self, sink: MessageSink | None) -> None:
        """Who receives `cfg/des` and `cmd/req` (on the loop); subscribed on each connect."""
        self._sink = sink

    def add_connect_listener(self, listener: Callable[[], None]) -> None:
        """Called on the loop after each connect, once the birth is out."""
        self._connect_listeners.append(listener)

    def publish_reply(
        self,
        channel: Literal[Channel.CFG_REP, Channel.CMD_RES],
        payload: bytes,
        on_ack: Callable[[bool, str], None] | None = None,
    ) -> bool:
        """Publish a reply of the device (config report, command result) if connected.

        `on_ack(acknowledged, reason)` runs on the loop when the broker answers.
        """
        if channel not in (Channel.CFG_REP, Channel.CMD_RES):
            raise ValueError(f"{channel} is not a reply channel")
        link = self._link
        if link is None or not link.up:
            return False
        info = self._publish(link, channel, payload)
        if info is None:
            return False
        if on_ack is not None:
            link.mids[info.mid] = on_ack
        return True

    async def run(self, stop: asyncio.Event) -> None:
        """Connect, publish and reconnect until `stop` is set; then disconnect cleanly."""
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._wake = asyncio.Event()
        stop_waiter = loop.create_task(stop.wait(), name="mqtt-stop")
        stop_waiter.add_done_callback(lambda _task: self._wake.set())
        self.store.add_listener(self._on_event_appended)
        attempt = 0
        closed_early = 0
        protocol = "3.1.1" if self.options.protocol == "3.1.1" else "5"
        try:
            while not stop.is_set():
                self._enforce_bounds()
                link = self._new_link(loop, protocol)
                wait: tuple[float, str] | None = None
                try:
                    await self._connect(link, stop_waiter)
                    if link.up:
                        closed_early = 0
                        await self._serve(link, stop)
                except _Refused as exc:
                    kind = exc.kind
                    closed_early = closed_early + 1 if kind == "closed" else 0
                    if kind == "protocol" and protocol == "5" and self.options.protocol == "auto":
                        log.warning("the MQTT broker refuses MQTT 5; falling back to MQTT 3.1.1")
                        protocol = "3.1.1"
                        wait = (0.0, "protocol")
                    elif kind == "auth" or closed_early >= self.options.closed_before_connack_limit:
                        wait = (self._auth_delay_s(), "auth")
                    self._log_connect_failure(exc, wait)
                except OSError as exc:
                    if _is_auth_tls_error(exc):
                        wait = (self._auth_delay_s(), "auth")
                    self._log_connect_failure(exc, wait)
                except TimeoutError as exc:
                    self._log_connect_failure(exc, None)
                except Exception:
                    # Telemetry must never take the agent (and its failover) down with it.
                    log.exception("unexpected error in the MQTT client; reconnecting")
                finally:
                    await self._close(link, drain=stop.is_set())
                if stop.is_set():
                    break
                lasted_s = (
                    self.clock.monotonic() - link.connected_at_s
                    if link.connected_at_s is not None
                    else 0.0
                )
                if lasted_s >= self.options.stable_after_s:
                    attempt = 0
                if wait is None and link.rotate:
                    wait = (0.0, "uplink")
                if wait is None:
                    delay_s = backoff_delay_s(
                        attempt,
                        self.options.reconnect_base_s,
                        self.options.reconnect_max_s,
                        self._rng.random(),
                    )
                    attempt += 1
                    wait = (delay_s, "backoff")
                self.last_wait = wait
                if wait[0] > 0:
                    log.info("reconnecting to the MQTT broker in %.1f s", wait[0])
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(asyncio.shield(stop_waiter), wait[0])
        finally:
            self.store.remove_listener(self._on_event_appended)
            stop_waiter.cancel()
            self._commit()

    def _auth_delay_s(self) -> float:
        return self.options.auth_backoff_s * (0.5 + 0.5 * self._rng.random())

    # -- one connection ------------------------------------------------------------------

    def _new_link(self, loop: asyncio.AbstractEventLoop, protocol: str) -> _Link:
        v5 = protocol == "5"
        client = _MeteredClient(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311,
            clean_session=None if v5 else False,
            reconnect_on_failure=False,
        )
        client.wire = self.wire
        # Our guards catch everything; this is the second belt should one of them not.
        client.suppress_exceptions = True
        client.enable_logger(paho_log)
        client.connect_timeout = self.options.connect_timeout_s
        if self._tls is not None:
            client.tls_set_context(self._tls)
        if self.settings.username:
            client.username_pw_set(self.settings.username, self._password)
        will: Properties | None = None
        if v5:
            will = Properties(PacketTypes.WILLMESSAGE)
            will.WillDelayInterval = self.options.will_delay_s
        client.will_set(
            self._topics[Channel.STATE],
            contract.OFFLINE_STATE.to_json(),
            qos=1,
            retain=True,
            properties=will,
        )
        link = _Link(client, loop.create_future(), protocol, self.keepalive_for(self._uplink))
        hook = self._network_hook
        client.on_connect = _guard("connect", functools.partial(self._thread_connect, link), hook)
        client.on_disconnect = _guard(
            "disconnect", functools.partial(self._thread_disconnect, link), hook
        )
        client.on_publish = _guard("publish", functools.partial(self._thread_publish, link), hook)
        client.on_message = _guard("message", functools.partial(self._thread_message, link), hook)
        client.on_socket_close = _guard("socket_close", self._thread_socket_close, hook)
        client.on_log = _guard("log", functools.partial(self._thread_log, link))
        return link

    async def _connect(self, link: _Link, stop_waiter: asyncio.Task[Any]) -> None:
        s = self.settings
        assert s.host is not None
        properties: Properties | None = None
        if link.protocol == "5":
            properties = Properties(PacketTypes.CONNECT)
            properties.SessionExpiryInterval = self.options.session_expiry_s
            properties.MaximumPacketSize = MAX_INCOMING_PACKET
        self._link = link
        try:
            await asyncio.to_thread(
                link.client.connect,
                s.host,
                s.port,
                link.keepalive_s,
                clean_start=False if link.protocol == "5" else paho.MQTT_CLEAN_START_FIRST_ONLY,
                properties=properties,
            )
        except BaseException:
            self.wire.finish()  # TCP up, TLS refused: those bytes count too
            raise
        link.client.loop_start()
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
            raise _Refused(*refusal)

    async def _serve(self, link: _Link, stop: asyncio.Event) -> None:
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
            link.client.subscribe([(self._topics[c], 1) for c in contract.DEVICE_SUBSCRIBES])
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
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout_s)

    def _fill(self, link: _Link) -> None:
        room = self.options.window - self.outbox.inflight
        try:
            batch = self.outbox.take(room)
        except StoreError as exc:
            log.error("cannot read the event outbox (%s); retrying", exc)
            return
        for stored in batch:
            payload = self.outbox.payload(stored, self.clock.wall())
            info = self._publish(link, Channel.EVT, payload)
            if info is None:
                return  # the rest goes at the next connection
            link.mids[info.mid] = stored.seq
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

    def _publish(
        self, link: _Link, channel: Channel, payload: bytes
    ) -> paho.MQTTMessageInfo | None:
        topic = self._topics[channel]
        info = link.client.publish(
            topic, payload, qos=contract.QOS[channel], retain=contract.RETAIN[channel]
        )
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            log.warning("cannot publish on %s: %s", topic, paho.error_string(info.rc))
            return None
        size = len(topic.encode()) + len(payload)
        self.bytes_sent += size
        self.bytes_by_channel[channel] += size
        return info

    async def _close(self, link: _Link, *, drain: bool) -> None:
        if drain and link.up:
            await self._drain(link)
        if drain and link.up and link.protocol == "3.1.1":
            # No will delay in 3.1.1 and a normal DISCONNECT discards the will: say it.
            self._publish(link, Channel.STATE, contract.OFFLINE_STATE.to_json())
        link.closing = True
        link.up = False
        if self._link is link:
            self._link = None
        if link.protocol == "5":
            link.client.disconnect(reasoncode=DISCONNECT_WITH_WILL)
        else:
            link.client.disconnect()
        joiner = asyncio.ensure_future(asyncio.to_thread(link.client.loop_stop))
        done, _ = await asyncio.wait({joiner}, timeout=JOIN_TIMEOUT_S)
        if not done:
            # DISCONNECT could not be written (a stalled peer): end the thread's socket.
            sock = link.client.socket()
            if isinstance(sock, socket.socket):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            await joiner
        self.wire.finish()
        self._fail_replies(link)
        self._commit()

    def _fail_replies(self, link: _Link) -> None:
        """Replies still waiting for a PUBACK will not get one: tell their senders."""
        for target in list(link.mids.values()):
            if callable(target):
                with contextlib.suppress(Exception):
                    target(False, "connection closed")
        link.mids.clear()

    async def _drain(self, link: _Link) -> None:
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

    def _log_connect_failure(self, exc: BaseException, wait: tuple[float, str] | None) -> None:
        where = f"{self.settings.host}:{self.settings.port}"
        later = f"; next try in {wait[0]:.0f} s" if wait and wait[1] == "auth" else ""
        if isinstance(exc, ssl.SSLCertVerificationError):
            log.warning(
                "the MQTT broker %s is not trusted (%s); check [mqtt] ca_file and host%s",
                where,
                exc.verify_message,
                later,
            )
        elif isinstance(exc, _Refused) and exc.kind == "protocol":
            log.warning("the MQTT broker %s refused the protocol version (%s)", where, exc)
        elif isinstance(exc, _Refused | ssl.SSLError):
            log.warning(
                "the MQTT broker %s refused the connection (%s); "
                "check [mqtt] username, password and certificate%s",
                where,
                exc,
                later,
            )
        else:
            log.warning("cannot reach the MQTT broker %s (%s)", where, exc or type(exc).__name__)

    # -- paho's network thread -----------------------------------------------------------

    def _post(self, handler: Callable[..., None], *args: Any) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(handler, *args)

    def _thread_connect(
        self, link: _Link, _client: Any, _userdata: Any, _flags: Any, reason: Any, _props: Any
    ) -> None:
        code = int(reason.value) if reason.is_failure else None
        self._post(self._on_connack, link, code, str(reason))

    def _thread_disconnect(
        self, link: _Link, _client: Any, _userdata: Any, _flags: Any, reason: Any, _props: Any
    ) -> None:
        self._post(self._on_disconnect, link, str(reason))

    def _thread_publish(
        self, link: _Link, _client: Any, _userdata: Any, mid: int, reason: Any, _props: Any
    ) -> None:
        self._post(self._on_publish, link, mid, bool(reason.is_failure), str(reason))

    def _thread_message(
        self, link: _Link, _client: Any, _userdata: Any, message: paho.MQTTMessage
    ) -> None:
        self._post(self._on_message, link, message.topic, bytes(message.payload), message.retain)

    def _thread_log(
        self, link: _Link, _client: Any, _userdata: Any, _level: int, text: str
    ) -> None:
        lowered = text.lower()
        if "ssl" in lowered and any(word in lowered for word in _TLS_REFUSALS):
            link.tls_alert = text

    def _thread_socket_close(self, _client: Any, _userdata: Any, _sock: Any) -> None:
        self.wire.finish()  # just before paho closes it: the last reading

    def _on_event_appended(self, _seq: int) -> None:
        """Store listener: runs in whichever thread appended; wakes the loop."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._wake.set)

    # -- the same facts, on the asyncio loop -----------------------------------------------

    def _on_connack(self, link: _Link, code: int | None, reason: str) -> None:
        if link.connack.done():
            return
        if code is not None:
            link.connack.set_result((reason, code))
            return
        link.up = not link.closing
        link.connected_at_s = self.clock.monotonic()
        link.connack.set_result(None)

    def _on_disconnect(self, link: _Link, reason: str) -> None:
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

    def _on_publish(self, link: _Link, mid: int, failed: bool, reason: str) -> None:
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

    def _on_message(self, link: _Link, topic: str, payload: bytes, retain: bool) -> None:
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


# -- the fleet side -------------------------------------------------------------------------


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
        self._password = _read_password(settings)
        self._tls = _tls_context(settings) if settings.tls else None
        self._queue: asyncio.Queue[Delivery] = asyncio.Queue()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: paho.Client | None = None
        #: Set when the broker acknowledged the subscriptions (each connect sets it again).
        self.subscribed = asyncio.Event()
        self.connects = 0

    @property
    def connected(self) -> bool:
        return self._client is not None and self._client.is_connected()

    async def run(self, stop: asyncio.Event) -> None:
        self._loop = asyncio.get_running_loop()
        client = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=MQTTProtocolVersion.MQTTv5,
            manual_ack=self.manual_ack,
        )
        client.suppress_exceptions = True
        client.enable_logger(paho_log)
        client.reconnect_delay_set(1, 30)
        if self._tls is not None:
            client.tls_set_context(self._tls)
        if self.settings.username:
            client.username_pw_set(self.settings.username, self._password)
        client.on_connect = _guard("connect", self._thread_connect)
        client.on_subscribe = _guard("subscribe", self._thread_subscribe)
        client.on_message = _guard("message", self._thread_message)
        self._client = client
        properties = Properties(PacketTypes.CONNECT)
        properties.SessionExpiryInterval = self.session_expiry_s
        assert self.settings.host is not None
        client.connect_async(
            self.settings.host,
            self.settings.port,
            self.settings.keepalive_s,
            clean_start=self.clean_start,
            properties=properties,
        )
        client.loop_start()
        consumer = asyncio.create_task(self._consume(), name="fleet-mqtt-consumer")
        try:
            await stop.wait()
        finally:
            consumer.cancel()
            await asyncio.gather(consumer, return_exceptions=True)
            client.disconnect()
            await asyncio.to_thread(client.loop_stop)
            self._client = None

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> bool:
        """Send a command or a desired config; True if handed to the connection."""
        client = self._client
        if client is None or not client.is_connected():
            return False
        return client.publish(topic, payload, qos=qos, retain=retain).rc == 0

    async def _consume(self) -> None:
        while True:
            delivery = await self._queue.get()
            try:
                result = self.handler(delivery)
                if asyncio.iscoroutine(result):
                    await result
            except Exception:
                log.exception("the fleet handler failed on %s; not acknowledged", delivery.topic)

    def _thread_connect(self, client: paho.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            log.warning("the MQTT broker refused the fleet client (%s)", reason)
            return
        self.connects += 1
        if self.subscriptions:
            client.subscribe([(t, 1) for t in self.subscriptions])

    def _thread_subscribe(self, _c: Any, _u: Any, _mid: Any, codes: Any, _p: Any) -> None:
        refused = [str(c) for c in codes if c.is_failure]
        if refused:
            log.error("the MQTT broker refused fleet subscriptions: %s", ", ".join(refused))
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self.subscribed.set)

    def _thread_message(self, client: paho.Client, _u: Any, message: paho.MQTTMessage) -> None:
        mid, qos = message.mid, message.qos

        def ack() -> None:
            if self.manual_ack and qos > 0:
                client.ack(mid, qos)

        delivery = Delivery(message.topic, bytes(message.payload), message.retain, qos, mid, ack)
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._queue.put_nowait, delivery)
