"""E-mail the site's customer and the provider's support when a site enters failover,
and again when the primary is back (with the outage's length and the LTE data used).

How it stays exactly-once for people while MQTT is at-least-once: see
`agent.fleet.state`. The notifier subscribes with a shared subscription
(`$share/<group>/cpe/v1/+/evt`, and `.../tele` for usage figures), so several
instances split the work and a restarted one gets what was queued for the group.
An event that is history by the time it arrives (a replayed failover after its
recovery was already mailed) is recorded but not mailed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from agent.clock import Clock
from agent.domain import EventKind
from agent.fleet.config import FleetSettings, SiteBook
from agent.fleet.mailer import MailError
from agent.fleet.state import NotifierState, StateError
from agent.telemetry import contract
from agent.telemetry.contract import Channel, EventPayload, TelemetryPayload
from agent.telemetry.mqtt import Delivery, FleetClient
from drivers import aio

log = logging.getLogger(__name__)

MAILED_KINDS = (EventKind.FAILOVER.value, EventKind.FAILBACK.value)
Send = Callable[[list[str], str, str, str], None]


def subscriptions(group: str) -> list[str]:
    return [
        f"$share/{group}/{contract.TOPIC_ROOT}/+/{c.value}" for c in (Channel.EVT, Channel.TELE)
    ]


def duration_text(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    minutes = round(seconds / 60)
    if minutes < 1:
        return f"{round(seconds)} s"
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    parts = [f"{days} d" if days else "", f"{hours} h" if hours else "", f"{minutes} min"]
    return " ".join(p for p in parts if p)


def bytes_text(count: int | float | None) -> str:
    if count is None:
        return "unknown"
    if count >= 1e9:
        return f"{count / 1e9:.2f} GB"
    return f"{count / 1e6:.1f} MB"


def time_text(wall_s: float) -> str:
    return datetime.fromtimestamp(wall_s, UTC).strftime("%Y-%m-%d %H:%M UTC")


class Notifier:
    def __init__(
        self,
        settings: FleetSettings,
        sites: SiteBook,
        state: NotifierState,
        send: Send,
        clock: Clock | None = None,
    ) -> None:
        self.settings = settings
        self.sites = sites
        self.state = state
        self.send = send
        self.clock = clock or Clock()
        self._wake = asyncio.Event()
        self.client: FleetClient | None = None
        #: Events handled, and how many of them were repeats (redeliveries, replays).
        self.events = 0
        self.duplicates = 0

    async def run(self, stop: asyncio.Event) -> None:
        n = self.settings.notifier
        self.client = FleetClient(
            self.settings.mqtt, n.client_id, subscriptions(n.share_group), self.handle
        )
        await asyncio.gather(self.client.run(stop), self.mail_loop(stop))

    # -- messages ------------------------------------------------------------------------

    def handle(self, delivery: Delivery) -> None:
        """Record, queue mail, then acknowledge; a failure to record leaves it unacknowledged."""
        try:
            device, channel = contract.parse_topic(delivery.topic)
            if channel is Channel.EVT:
                queued = self._event(device, EventPayload.model_validate_json(delivery.payload))
            elif channel is Channel.TELE:
                queued = self._telemetry(
                    device, TelemetryPayload.model_validate_json(delivery.payload)
                )
            else:
                queued = False
        except (contract.ContractError, ValidationError) as exc:
            first = str(exc).splitlines()[0]
            log.warning(
                "ignored a message on %s that does not fit the contract: %s", delivery.topic, first
            )
            delivery.ack()  # nothing to learn from it; holding it would stall the session
            return
        except StateError as exc:
            log.error("%s; the message stays unacknowledged and comes again", exc)
            return
        delivery.ack()
        if queued:
            self._wake.set()

    def _telemetry(self, device: str, message: TelemetryPayload) -> bool:
        if message.usage is None or message.usage.used_bytes is None:
            return False
        with self.state.transaction() as db:
            doc = NotifierState.site_doc(db, device)
            doc["usage"] = message.usage.model_dump(exclude_none=True)
            NotifierState.put_site_doc(db, device, doc)
        return False

    def _event(self, device: str, event: EventPayload) -> bool:
        with self.state.transaction() as db:
            new = NotifierState.mark_seen(
                db, device, event.epoch, event.seq, event.kind, event.wall_time_s
            )
            self.events += 1
            if not new:
                self.duplicates += 1
                log.info("%s event %s:%d seen before; no mail", device, event.epoch, event.seq)
                return False
            if event.kind not in MAILED_KINDS:
                return False
            return self._transition(db, device, event)

    def _transition(self, db: sqlite3.Connection, device: str, event: EventPayload) -> bool:
        doc = NotifierState.site_doc(db, device)
        if doc.get("epoch") == event.epoch and event.seq < int(doc.get("last_seq", 0)):
            log.info("%s %s (seq %d) is history; no mail", device, event.kind, event.seq)
            return False
        if event.kind == EventKind.FAILOVER.value:
            doc["failover"] = {"epoch": event.epoch, "wall_time_s": event.wall_time_s,
                               "usage": doc.get("usage")}  # fmt: skip
            subject, body = self._failover_mail(device, event)
        else:
            subject, body = self._failback_mail(device, event, doc.pop("failover", None), doc)
        doc["epoch"], doc["last_seq"] = event.epoch, event.seq
        NotifierState.put_site_doc(db, device, doc)
        recipients = self._recipients(device)
        key = f"{device}:{event.epoch}:{event.seq}"
        NotifierState.queue_mail(db, key, recipients, subject, body, self.clock.wall())
        return True

    def _recipients(self, device: str) -> list[str]:
        site = self.sites.site(device)
        people = list(site.emails) if site else []
        support = [e for e in self.settings.notifier.support_emails if e not in people]
        return people + support

    def _site_name(self, device: str) -> str:
        site = self.sites.site(device)
        return f"{site.name} ({device})" if site and site.name else device

    def _failover_mail(self, device: str, event: EventPayload) -> tuple[str, str]:
        name = self._site_name(device)
        late = " (reported late: the site could not report at the time)" if event.late else ""
        reason = event.data.get("reason") or "the primary link is down or too poor for calls"
        subject = f"[VoIP failover] {name}: phones moved to the LTE backup"
        body = "\n".join(
            [
                f"Site: {name}",
                f"Since: {time_text(event.wall_time_s)}{late}",
                f"Why: {reason}",
                "",
                "The primary internet link failed, so the phones now use the LTE backup.",
                "Calls in progress when it happened were dropped; phones take 1 to 3",
                "minutes to register again. LTE data is metered against the monthly plan.",
                "You will get another message when the primary link is back.",
                "",
                self._unknown_site_note(device),
            ]
        ).rstrip()
        return subject, body + "\n"

    def _failback_mail(
        self, device: str, event: EventPayload, failover: dict[str, Any] | None, doc: dict[str, Any]
    ) -> tuple[str, str]:
        name = self._site_name(device)
        outage_s = event.data.get("on_cellular_s")
        if (
            not isinstance(outage_s, int | float)
            and failover
            and failover.get("epoch") == event.epoch
        ):
            outage_s = event.wall_time_s - float(failover["wall_time_s"])
        used = event.data.get("cellular_bytes")
        approx = ""
        if not isinstance(used, int | float):
            used, approx = _usage_delta(failover, doc.get("usage")), " (from usage reports)"
        if used is None:
            approx = ""
        late = " (reported late)" if event.late else ""
        subject = f"[VoIP restored] {name}: primary link back after {duration_text(outage_s)}"
        body = "\n".join(
            [
                f"Site: {name}",
                f"Primary back: {time_text(event.wall_time_s)}{late}",
                f"Outage: {duration_text(outage_s)}",
                f"LTE data used during the outage: {bytes_text(used)}{approx}",
                "",
                "The phones are back on the primary internet link.",
                "",
                self._unknown_site_note(device),
            ]
        ).rstrip()
        return subject, body + "\n"

    def _unknown_site_note(self, device: str) -> str:
        if self.sites.site(device) is None:
            return f"Note: {device} is not in the sites file; only support was told."
        return ""

    # -- mail --------------------------------------------------------------------------------

    async def mail_loop(self, stop: asyncio.Event) -> None:
        retry_s = self.settings.notifier.retry_s
        while not stop.is_set():
            self._wake.clear()
            now = self.clock.wall()
            for mail in self.state.due_mails(now):
                if not mail.recipients:
                    log.warning("no one to tell about %s (no site e-mails, no support)", mail.key)
                    self.state.mail_sent(mail.id, now)
                    continue
                try:
                    await asyncio.to_thread(
                        self.send, mail.recipients, mail.subject, mail.body, mail.key
                    )
                except MailError as exc:
                    delay_s = min(3600.0, retry_s * 2**mail.attempts)
                    log.warning("%s; trying again in %.1f s", exc, delay_s)
                    self.state.mail_failed(mail.id, str(exc), self.clock.wall() + delay_s)
                else:
                    log.info("mailed %s to %s", mail.subject, ", ".join(mail.recipients))
                    self.state.mail_sent(mail.id, self.clock.wall())
            next_try = self.state.next_try_wall_s()
            timeout_s = 60.0 if next_try is None else max(0.05, next_try - self.clock.wall())
            # Not asyncio.wait_for: on 3.11 a cancel that came as mail was queued was
            # lost, and the loop ran on until `stop` (drivers.aio).
            with contextlib.suppress(TimeoutError):
                await aio.wait_for(_first(self._wake, stop), min(timeout_s, 60.0))


async def _first(*events: asyncio.Event) -> None:
    waiters = [asyncio.create_task(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


def _usage_delta(failover: dict[str, Any] | None, now: dict[str, Any] | None) -> int | None:
    before = (failover or {}).get("usage") or {}
    if not now or not before:
        return None
    if before.get("cycle_start") != now.get("cycle_start"):
        return None  # a new plan cycle began during the outage: the counts do not subtract
    try:
        return max(0, int(now["used_bytes"]) - int(before["used_bytes"]))
    except (KeyError, TypeError, ValueError):
        return None
