"""The agent's MQTT client: the only module that imports paho.

Shape, and why:

- One paho `Client` per network connection (`_Link`), made by our own reconnect loop
  with exponential back-off and full jitter, so a fleet that lost its broker does not
  come back in one wave. paho's own reconnect is off (`reconnect_on_failure=False`):
  exactly one loop decides when to retry. Events are never queued inside paho across
  connections: the SQLite outbox is the only queue, and every new connection resends
  what the broker has not acknowledged, oldest first.
- paho's network thread (`loop_start`) runs the callbacks. Each is guarded (an
  exception there would silently end that thread) and only hands facts to the asyncio
  loop with `call_soon_threadsafe`; all state is read and written on the loop.
- MQTT 5, `clean_start=False` with a session expiry, a retained birth on `state` at
  every connect and a retained last will (`online: false`) with a will delay. A planned
  stop disconnects with reason 0x04 "disconnect with will message": the broker
  publishes the will only if the agent is not back within the delay, so a restart does
  not flap the site offline, while a stop that lasts does show.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import socket
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

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


@dataclass(frozen=True)
class MqttOptions:
    """Tunables not (yet) in the config file; the defaults suit a site in the field."""

    #: After an unclean loss (or a stop) the broker waits this long before the will.
    will_delay_s: int = 60
    #: The broker keeps the session (and will delay) this long after a disconnect.
    session_expiry_s: int = 86_400
    reconnect_base_s: float = 2.0
    reconnect_max_s: float = 120.0
    #: A connection that lasted this long starts the back-off from the beginning again.
    stable_after_s: float = 60.0
    connect_timeout_s: float = 15.0
    #: Events published and not yet acknowledged, at most.
    window: int = 10
    #: No PUBACK for this long: drop the connection and resend (the only resend MQTT allows).
    ack_timeout_s: float = 120.0
    #: Look at the store this often without a wake-up (events written by another process).
    poll_s: float = 5.0
    #: On stop, wait this long for outstanding PUBACKs before disconnecting.
    drain_on_stop_s: float = 2.0
    late_after_s: float = contract.LATE_AFTER_S


class TelemetryError(Exception):
    """The MQTT settings cannot be used (no host, unreadable certificate, key or password)."""


class _Refused(Exception):
    """The broker answered CONNECT with a failure reason code, or closed before CONNACK."""


def backoff_delay_s(attempt: int, base_s: float, max_s: float, rand: float) -> float:
    """Full jitter: uniform between base/4 and min(max, base * 2**attempt); `rand` in [0, 1)."""
    ceiling = min(max_s, base_s * 2 ** min(attempt, 30))
    floor = min(base_s / 4, ceiling)
    return floor + (ceiling - floor) * rand


@dataclass(eq=False)
class _Link:
    """One network connection: one paho client and its thread; discarded when it ends."""

    client: paho.Client
    #: None when the broker accepted; a reason when it refused or the socket closed first.
    connack: asyncio.Future[str | None]
    #: paho message id -> event seq, for the events published on this connection.
    mids: dict[int, int] = field(default_factory=dict)
    up: bool = False
    closing: bool = False
    connected_at_s: float | None = None


class TelemetryClient:
    """Publishes the state, the outbox's events and link telemetry; reconnects by itself.

    Use from one asyncio loop: `await run(stop)` in a task; `publish_state` and
    `publish_telemetry` from the same loop at any time (they never block).
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
        self.options = options or MqttOptions()
        self.outbox = Outbox(store, late_after_s=self.options.late_after_s)
        self._rng = rng or random.Random()
        #: Called in paho's network thread at each callback, by name; tests and diagnostics.
        self._network_hook = network_hook
        self._password = self._read_password()
        self._tls = self._tls_context() if settings.tls else None
        self._topics = {channel: contract.topic(device_id, channel) for channel in Channel}
        self._state = contract.online_state({})
        self._link: _Link | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake = asyncio.Event()
        #: Topic + payload bytes handed to the broker connection (retransmits included).
        self.bytes_sent = 0
        self.bytes_by_channel: dict[Channel, int] = dict.fromkeys(Channel, 0)
        self.connects = 0

    # -- settings ----------------------------------------------------------------------

    @property
    def client_id(self) -> str:
        """The device id: broker ACLs can then pattern on it (`cpe/v1/%c/#`)."""
        return self.device_id

    @property
    def connected(self) -> bool:
        return self._link is not None and self._link.up

    def _read_password(self) -> str | None:
        try:
            return read_secret(self.settings.password, self.settings.password_file)
        except OSError as exc:
            raise TelemetryError(
                f"cannot read [mqtt] password_file {self.settings.password_file} "
                f"({exc.strerror}); create it or fix its permissions."
            ) from exc

    def _tls_context(self) -> ssl.SSLContext:
        s = self.settings
        if s.key_file is not None and s.cert_file is None:
            raise TelemetryError("[mqtt] key_file is set without cert_file; set both or neither.")
        try:
            context = ssl.create_default_context(cafile=str(s.ca_file) if s.ca_file else None)
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            if s.cert_file is not None:
                context.load_cert_chain(s.cert_file, s.key_file)
        except OSError as exc:  # ssl.SSLError is an OSError
            raise TelemetryError(
                f"cannot use the MQTT TLS files ({exc}); "
                "check [mqtt] ca_file, cert_file and key_file."
            ) from exc
        return context

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
        """Send a link-quality summary (`links`, optional `mode`, `wall_time_s`) at QoS 0.

        Dropped (False) while offline: the next one replaces it.
        """
        unknown = set(telemetry) - {"links", "mode", "wall_time_s"}
        if unknown:
            raise contract.ContractError(f"telemetry has unknown keys: {sorted(unknown)}")
        link = self._link
        if link is None or not link.up:
            return False
        message = contract.telemetry_message(
            wall_time_s=telemetry.get("wall_time_s", self.clock.wall()),
            links=telemetry.get("links", {}),
            mode=telemetry.get("mode"),
        )
        return self._publish(link, Channel.TELE, message.to_json()) is not None

    async def run(self, stop: asyncio.Event) -> None:
        """Connect, publish and reconnect until `stop` is set; then disconnect cleanly."""
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._wake = asyncio.Event()
        stop_waiter = loop.create_task(stop.wait(), name="mqtt-stop")
        stop_waiter.add_done_callback(lambda _task: self._wake.set())
        self.store.add_listener(self._on_event_appended)
        attempt = 0
        try:
            while not stop.is_set():
                link = self._new_link(loop)
                try:
                    await self._connect(link, stop_waiter)
                    if link.up:
                        await self._serve(link, stop)
                except (OSError, TimeoutError, _Refused) as exc:
                    self._log_connect_failure(exc)
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
                delay_s = backoff_delay_s(
                    attempt,
                    self.options.reconnect_base_s,
                    self.options.reconnect_max_s,
                    self._rng.random(),
                )
                attempt += 1
                log.info("reconnecting to the MQTT broker in %.1f s", delay_s)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(stop_waiter), delay_s)
        finally:
            self.store.remove_listener(self._on_event_appended)
            stop_waiter.cancel()
            self._commit()

    # -- one connection ------------------------------------------------------------------

    def _new_link(self, loop: asyncio.AbstractEventLoop) -> _Link:
        client = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=MQTTProtocolVersion.MQTTv5,
            reconnect_on_failure=False,
        )
        # Our guards catch everything; this is the second belt should one of them not.
        client.suppress_exceptions = True
        client.enable_logger(paho_log)
        client.connect_timeout = self.options.connect_timeout_s
        if self._tls is not None:
            client.tls_set_context(self._tls)
        if self.settings.username:
            client.username_pw_set(self.settings.username, self._password)
        will = Properties(PacketTypes.WILLMESSAGE)
        will.WillDelayInterval = self.options.will_delay_s
        client.will_set(
            self._topics[Channel.STATE],
            contract.OFFLINE_STATE.to_json(),
            qos=1,
            retain=True,
            properties=will,
        )
        link = _Link(client, loop.create_future())
        client.on_connect = self._guard("connect", functools.partial(self._thread_connect, link))
        client.on_disconnect = self._guard(
            "disconnect", functools.partial(self._thread_disconnect, link)
        )
        client.on_publish = self._guard("publish", functools.partial(self._thread_publish, link))
        return link

    async def _connect(self, link: _Link, stop_waiter: asyncio.Task[Any]) -> None:
        s = self.settings
        assert s.host is not None
        properties = Properties(PacketTypes.CONNECT)
        properties.SessionExpiryInterval = self.options.session_expiry_s
        self._link = link
        await asyncio.to_thread(
            link.client.connect,
            s.host,
            s.port,
            s.keepalive_s,
            clean_start=False,
            properties=properties,
        )
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
            raise _Refused(refusal)

    async def _serve(self, link: _Link, stop: asyncio.Event) -> None:
        self.connects += 1
        log.info(
            "connected to the MQTT broker %s:%s as %s",
            self.settings.host,
            self.settings.port,
            self.client_id,
        )
        self._commit()
        self.outbox.begin_session()
        self._publish(link, Channel.STATE, self._state.to_json())
        while link.up and not stop.is_set():
            self._wake.clear()
            self._commit()
            self._fill(link)
            age_s = self.outbox.oldest_inflight_age_s(self.clock.monotonic())
            if age_s is not None and age_s > self.options.ack_timeout_s:
                log.warning("no PUBACK for %.0f s; reconnecting to resend the events", age_s)
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.options.poll_s)

    def _fill(self, link: _Link) -> None:
        room = self.options.window - self.outbox.inflight
        for stored in self.outbox.take(room):
            payload = self.outbox.payload(stored, self.clock.wall())
            info = self._publish(link, Channel.EVT, payload)
            if info is None:
                return  # the rest goes at the next connection
            link.mids[info.mid] = stored.seq
            self.outbox.sent(stored.seq, self.clock.monotonic())

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
        link.closing = True
        link.up = False
        if self._link is link:
            self._link = None
        link.client.disconnect(reasoncode=DISCONNECT_WITH_WILL)
        joiner = asyncio.ensure_future(asyncio.to_thread(link.client.loop_stop))
        done, _ = await asyncio.wait({joiner}, timeout=JOIN_TIMEOUT_S)
        if not done:
            # DISCONNECT could not be written (a stalled peer): end the thread's socket.
            sock = link.client.socket()
            if isinstance(sock, socket.socket):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            await joiner
        self._commit()

    async def _drain(self, link: _Link) -> None:
        """Give outstanding PUBACKs a moment, so the next start resends less."""
        deadline_s = self.clock.monotonic() + self.options.drain_on_stop_s
        while link.up and self.outbox.inflight:
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

    def _log_connect_failure(self, exc: BaseException) -> None:
        where = f"{self.settings.host}:{self.settings.port}"
        if isinstance(exc, ssl.SSLCertVerificationError):
            log.warning(
                "the MQTT broker %s is not trusted (%s); check [mqtt] ca_file and host",
                where,
                exc.verify_message,
            )
        elif isinstance(exc, _Refused):
            log.warning(
                "the MQTT broker %s refused the connection (%s); "
                "check [mqtt] username, password and certificate",
                where,
                exc,
            )
        else:
            log.warning("cannot reach the MQTT broker %s (%s)", where, exc or type(exc).__name__)

    # -- paho's network thread -----------------------------------------------------------

    def _guard(self, name: str, handler: Callable[..., None]) -> Callable[..., None]:
        """Never let an exception escape into paho: it would end its network thread."""

        def callback(*args: Any) -> None:
            try:
                if self._network_hook is not None:
                    self._network_hook(name)
                handler(*args)
            except Exception:
                log.exception("the MQTT %s callback failed; the network thread carries on", name)

        return callback

    def _post(self, handler: Callable[..., None], *args: Any) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(handler, *args)

    def _thread_connect(
        self, link: _Link, _client: Any, _userdata: Any, _flags: Any, reason: Any, _props: Any
    ) -> None:
        self._post(self._on_connack, link, bool(reason.is_failure), str(reason))

    def _thread_disconnect(
        self, link: _Link, _client: Any, _userdata: Any, _flags: Any, reason: Any, _props: Any
    ) -> None:
        self._post(self._on_disconnect, link, str(reason))

    def _thread_publish(
        self, link: _Link, _client: Any, _userdata: Any, mid: int, reason: Any, _props: Any
    ) -> None:
        self._post(self._on_publish, link, mid, bool(reason.is_failure), str(reason))

    def _on_event_appended(self, _seq: int) -> None:
        """Store listener: runs in whichever thread appended; wakes the loop."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._wake.set)

    # -- the same facts, on the asyncio loop -----------------------------------------------

    def _on_connack(self, link: _Link, failed: bool, reason: str) -> None:
        if link.connack.done():
            return
        if failed:
            link.connack.set_result(reason)
            return
        link.up = not link.closing
        link.connected_at_s = self.clock.monotonic()
        link.connack.set_result(None)

    def _on_disconnect(self, link: _Link, reason: str) -> None:
        was_up = link.up
        link.up = False
        if not link.connack.done():
            link.connack.set_result(f"the connection closed before CONNACK: {reason}")
        if was_up and not link.closing:
            log.warning("lost the MQTT connection (%s)", reason)
        self._wake.set()

    def _on_publish(self, link: _Link, mid: int, failed: bool, reason: str) -> None:
        seq = link.mids.pop(mid, None)
        if seq is None:
            if failed:
                log.error("the MQTT broker refused a state message (%s)", reason)
            return
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
