"""`cpe-agent fleet watch`: a live table of the sites (state, link, signal, usage, last seen).

It reads what the sites publish: the retained `state`, `tele` and `cfg/rep` give a
newcomer every site's latest at once, then `state`, `tele` and `evt` keep it live.
`FleetView` is the table's model (it takes messages and gives rows, no I/O);
`watch()` runs it against the broker. `--once` waits until the broker has sent the
retained messages (a marker published after subscribing comes back after them),
prints once and exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError
from rich.console import Console
from rich.live import Live
from rich.table import Table

from agent.domain import Mode
from agent.fleet.config import FleetSettings
from agent.fleet.notifier import bytes_text
from agent.telemetry import contract
from agent.telemetry.contract import Channel
from agent.telemetry.mqtt import Delivery, FleetClient

SYNC_ROOT = "fleet/v1/sync"
CHANNELS = (Channel.STATE, Channel.TELE, Channel.EVT, Channel.CFG_REP)


@dataclass
class SiteRow:
    device_id: str
    online: bool | None = None
    mode: str | None = None
    since_wall_s: float | None = None
    links: dict[str, Any] = field(default_factory=dict)
    signal: dict[str, Any] = field(default_factory=dict)
    usage: dict[str, Any] = field(default_factory=dict)
    last_seen_wall_s: float | None = None
    last_event: str | None = None
    cfg_version: int | None = None

    @property
    def link(self) -> str | None:
        """Which link VoIP uses now, from the mode."""
        if self.mode is None:
            return None
        return "lte" if Mode(self.mode).voip_on_cellular else "primary"

    def seen(self, wall_s: float | None) -> None:
        if wall_s is not None and (self.last_seen_wall_s is None or wall_s > self.last_seen_wall_s):
            self.last_seen_wall_s = wall_s

    def as_json(self) -> dict[str, Any]:
        return {
            "device_id": self.device_id,
            "online": self.online,
            "mode": self.mode,
            "since_wall_s": self.since_wall_s,
            "link": self.link,
            "links": self.links,
            "signal": self.signal,
            "usage": self.usage,
            "last_seen_wall_s": self.last_seen_wall_s,
            "last_event": self.last_event,
            "cfg_version": self.cfg_version,
        }


class FleetView:
    def __init__(self) -> None:
        self.sites: dict[str, SiteRow] = {}
        #: Messages that did not fit the contract (shown, never fatal).
        self.malformed = 0

    def apply(self, topic: str, payload: bytes, now_wall_s: float) -> None:
        try:
            device, channel = contract.parse_topic(topic)
            if not payload:
                return  # a cleared retained message
            row = self.sites.setdefault(device, SiteRow(device))
            if channel is Channel.STATE:
                state = contract.StatePayload.model_validate_json(payload)
                row.online, row.mode, row.since_wall_s = state.online, state.mode, state.since
                row.seen(now_wall_s if state.online else None)
            elif channel is Channel.TELE:
                tele = contract.TelemetryPayload.model_validate_json(payload)
                row.links = {r: q.model_dump(exclude_none=True) for r, q in tele.links.items()}
                if tele.signal:
                    row.signal = tele.signal.model_dump(exclude_none=True)
                if tele.usage:
                    row.usage = tele.usage.model_dump(exclude_none=True)
                if tele.mode is not None and row.mode is None:
                    row.mode = tele.mode
                row.seen(tele.wall_time_s)
            elif channel is Channel.EVT:
                event = contract.EventPayload.model_validate_json(payload)
                row.last_event = event.kind
                row.seen(event.wall_time_s if event.late else now_wall_s)
            elif channel is Channel.CFG_REP:
                report = contract.ReportedConfig.model_validate_json(payload)
                row.cfg_version = report.version
        except (contract.ContractError, ValidationError):
            self.malformed += 1

    def rows(self) -> list[SiteRow]:
        return [self.sites[k] for k in sorted(self.sites)]

    def as_json(self) -> dict[str, Any]:
        return {
            "ok": True,
            "sites": [r.as_json() for r in self.rows()],
            "malformed": self.malformed,
        }

    def table(self, now_wall_s: float) -> Table:
        table = Table(title="cpe-agent fleet", expand=False)
        for column in ("site", "state", "link", "primary", "lte", "signal", "usage", "last seen"):
            table.add_column(column)
        for row in self.rows():
            table.add_row(
                row.device_id,
                _state_text(row),
                row.link or "?",
                _link_text(row.links.get("primary")),
                _link_text(row.links.get("cellular")),
                _signal_text(row.signal),
                _usage_text(row.usage),
                _age_text(row.last_seen_wall_s, now_wall_s),
            )
        return table


def _state_text(row: SiteRow) -> str:
    if row.online is False:
        return "[red]offline[/red]"
    mode = row.mode or "?"
    return f"[yellow]{mode}[/yellow]" if mode != Mode.PRIMARY.value else mode


def _link_text(link: dict[str, Any] | None) -> str:
    if not link:
        return "-"
    text = str(link.get("verdict", "?"))
    if link.get("mos") is not None:
        text += f" MOS {link['mos']:.1f}"
    return text


def _signal_text(signal: dict[str, Any]) -> str:
    if not signal:
        return "-"
    parts = []
    if signal.get("rsrp_dbm") is not None:
        parts.append(f"{signal['rsrp_dbm']:.0f} dBm")
    if signal.get("bars") is not None:
        parts.append(f"{signal['bars']}/5")
    return " ".join(parts) or "-"


def _usage_text(usage: dict[str, Any]) -> str:
    used = usage.get("used_bytes")
    if used is None:
        return "-"
    cap = usage.get("cap_bytes")
    if cap:
        return f"{bytes_text(used)} of {bytes_text(cap)} ({100 * used / cap:.0f}%)"
    return bytes_text(used)


def _age_text(wall_s: float | None, now_wall_s: float) -> str:
    if wall_s is None:
        return "never"
    age_s = max(0.0, now_wall_s - wall_s)
    if age_s < 90:
        return f"{age_s:.0f} s ago"
    if age_s < 5400:
        return f"{age_s / 60:.0f} min ago"
    return f"{age_s / 3600:.1f} h ago"


async def watch(
    settings: FleetSettings,
    *,
    once: bool,
    as_json: bool,
    wait_s: float = 5.0,
    console: Console | None = None,
) -> FleetView:
    """Run the table; with `once`, return after the retained messages (or `wait_s`)."""
    console = console or Console()
    view = FleetView()
    client_id = settings.watch.client_id or f"fleet-watch-{uuid.uuid4().hex[:8]}"
    sync_topic = f"{SYNC_ROOT}/{client_id}"
    marker = uuid.uuid4().hex.encode()
    synced = asyncio.Event()

    def handle(delivery: Delivery) -> None:
        if delivery.topic == sync_topic:
            if delivery.payload == marker:
                synced.set()
            return
        view.apply(delivery.topic, delivery.payload, time.time())

    topics = [f"{contract.TOPIC_ROOT}/+/{c.value}" for c in CHANNELS] + [sync_topic]
    client = FleetClient(
        settings.mqtt, client_id, topics, handle, manual_ack=False, session_expiry_s=0,
        clean_start=True,
    )  # fmt: skip
    stop = asyncio.Event()
    task = asyncio.create_task(client.run(stop))
    try:
        if once:
            deadline = time.monotonic() + wait_s
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(client.subscribed.wait(), wait_s)
                client.publish(sync_topic, marker, qos=1)
                await asyncio.wait_for(synced.wait(), max(0.1, deadline - time.monotonic()))
            if not client.subscribed.is_set():
                raise ConnectionError(
                    f"could not subscribe at the MQTT broker {settings.mqtt.host}:"
                    f"{settings.mqtt.port} within {wait_s:.0f} s; check [mqtt] in the fleet config"
                )
            if as_json:
                print(json.dumps(view.as_json(), sort_keys=True))
            else:
                console.print(view.table(time.time()))
            return view
        with Live(view.table(time.time()), console=console, refresh_per_second=1) as live:
            while not task.done():
                live.update(view.table(time.time()))
                await asyncio.sleep(1.0)
        return view
    finally:
        stop.set()
        await asyncio.gather(task, return_exceptions=True)
