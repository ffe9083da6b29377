"""The device's MQTT client (`TelemetryClient`): what the agent calls, and the loop that
keeps a connection to the broker.

- One connection at a time (`link.py`), made by our own reconnect loop with
  exponential back-off and full jitter (`backoff.py`); a refused login or certificate
  waits `auth_backoff_s`. paho's own reconnect is off: exactly one loop decides when
  to retry.
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
import logging
import random
import ssl
from collections.abc import Callable, Mapping
from typing import Any, Literal

from agent.clock import Clock
from agent.config import MqttSection
from agent.store import Store, StoreError
from agent.telemetry import contract
from agent.telemetry.contract import Channel
from agent.telemetry.mqtt.backoff import Refused, auth_delay_s, backoff_delay_s, is_auth_tls_error
from agent.telemetry.mqtt.link import LinkWork, MessageSink
from agent.telemetry.mqtt.options import (
    MqttOptions,
    TelemetryError,
    Uplink,
    read_password,
    tls_context,
)
from agent.telemetry.outbox import Outbox
from agent.telemetry.schedule import TelemetryPolicy, TelemetrySchedule
from agent.telemetry.wire import WireMeter, WireTotals

log = logging.getLogger(__name__)


class TelemetryClient(LinkWork):
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
        self._password = read_password(settings)
        self._tls = tls_context(settings) if settings.tls else None
        self._topics = {channel: contract.topic(device_id, channel) for channel in Channel}
        self._state = contract.online_state({})
        self._link = None
        self._loop = None
        self._wake = asyncio.Event()
        self._uplink = "primary"
        self._schedule = TelemetrySchedule(
            TelemetryPolicy(
                heartbeat_s=self.options.heartbeat_s,
                heartbeat_cellular_s=self.options.heartbeat_cellular_s,
                batch_cellular_s=self.options.batch_cellular_s,
                min_interval_s=self.options.min_tele_interval_s,
            )
        )
        self._sink = None
        self._connect_listeners = []
        self._started_s = self.clock.monotonic()
        #: Bytes on the wire (IP + TCP + TLS + MQTT) per uplink, measured at the socket.
        self.wire = WireMeter()
        #: Topic + payload bytes handed to the broker connection (retransmits included).
        self.bytes_sent = 0
        self.bytes_by_channel = dict.fromkeys(Channel, 0)
        self.connects = 0
        #: "5" or "3.1.1" once a broker accepted; None before.
        self.protocol = None
        #: The last reconnect wait and why ("backoff", "auth", "protocol", "uplink").
        self.last_wait: tuple[float, str] | None = None

    # -- settings ----------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._link is not None and self._link.up

    @property
    def uplink(self) -> Uplink:
        return self._uplink

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
        mid = self._publish(link, channel, payload)
        if mid is None:
            return False
        if on_ack is not None:
            link.mids[mid] = on_ack
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
                except Refused as exc:
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
                    if is_auth_tls_error(exc):
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
        return auth_delay_s(self.options.auth_backoff_s, self._rng.random())

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
        elif isinstance(exc, Refused) and exc.kind == "protocol":
            log.warning("the MQTT broker %s refused the protocol version (%s)", where, exc)
        elif isinstance(exc, Refused | ssl.SSLError):
            log.warning(
                "the MQTT broker %s refused the connection (%s); "
                "check [mqtt] username, password and certificate%s",
                where,
                exc,
                later,
            )
        else:
            log.warning("cannot reach the MQTT broker %s (%s)", where, exc or type(exc).__name__)

    def _on_event_appended(self, _seq: int) -> None:
        """Store listener: runs in whichever thread appended; wakes the loop."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._wake.set)
