"""The provider's side end to end: a real mosquitto (TLS, client certificates, the ACL),
a real SMTP server (aiosmtpd, on loopback), a device with the agent's MQTT client.

A failover gives one e-mail, a recovery gives one, to the site's customer and to
support, across a replay of the events, a cut in the notifier's connection and a
restart of the notifier. `cpe-agent fleet watch --once --json` shows the site.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from email import message_from_bytes
from email.message import Message
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from agent import cli
from agent.config import MqttSection
from agent.domain import Event, EventKind
from agent.fleet.config import (
    FleetSettings,
    NotifierSection,
    SiteBook,
    SmtpSection,
    load_fleet_settings,
    load_sites,
)
from agent.fleet.mailer import SmtpMailer
from agent.fleet.notifier import Notifier, duration_text
from agent.fleet.state import NotifierState
from agent.fleet.watch import FleetView
from agent.store import Store
from agent.telemetry.commands import AgentHooks, CommandHandler
from agent.telemetry.contract import Channel, topic
from agent.telemetry.mqtt import MqttOptions, TelemetryClient
from tests.helpers.mosquitto import (
    DEVICE_ACL,
    Mosquitto,
    TcpRelay,
    free_port,
    issue_client_cert,
    peer,
    until,
)

SITE = "site-a"
CUSTOMER, SUPPORT = "office@acme.example", "noc@provider.example"
FAST = MqttOptions(
    will_delay_s=0,
    reconnect_base_s=0.1,
    reconnect_max_s=0.4,
    stable_after_s=0.0,
    connect_timeout_s=3.0,
    poll_s=0.2,
    drain_on_stop_s=1.0,
    min_tele_interval_s=0.0,
)


class Inbox:
    """aiosmtpd handler: keeps every message the server accepted."""

    def __init__(self) -> None:
        self.messages: list[tuple[list[str], Message]] = []
        self.refuse = False

    async def handle_DATA(self, _server: Any, _session: Any, envelope: Any) -> str:
        if self.refuse:
            return "451 4.3.0 try again later"
        self.messages.append((list(envelope.rcpt_tos), message_from_bytes(envelope.content)))
        return "250 OK"

    def subjects(self) -> list[str]:
        return [str(m["Subject"]) for _, m in self.messages]


@pytest.fixture
def smtp() -> Iterator[tuple[Inbox, int]]:
    inbox = Inbox()
    port = free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield inbox, port
    finally:
        controller.stop()


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    b = Mosquitto(tmp_path_factory.mktemp("fleet-broker"), tls=True, acl=DEVICE_ACL, plain=False)
    try:
        b.start()
        yield b
    finally:
        b.close()


@pytest.fixture(scope="module")
def certs(broker: Mosquitto) -> dict[str, tuple[Path, Path]]:
    assert broker.tls_files is not None
    return {
        n: issue_client_cert(broker.tls_files, n) for n in (SITE, "fleet-notifier", "fleet-console")
    }


def mqtt_settings(
    broker: Mosquitto, cert: tuple[Path, Path], port: int | None = None
) -> MqttSection:
    assert broker.tls_files is not None and broker.tls_port is not None
    return MqttSection(
        host="127.0.0.1",
        port=port or broker.tls_port,
        tls=True,
        ca_file=broker.tls_files.ca_file,
        cert_file=cert[0],
        key_file=cert[1],
        keepalive_s=5,
    )


@dataclass
class Device:
    client: TelemetryClient
    store: Store


@pytest.fixture
async def device(broker, certs, tmp_path) -> AsyncIterator[Device]:
    store = Store(tmp_path / "agent.db")
    client = TelemetryClient(mqtt_settings(broker, certs[SITE]), SITE, store, options=FAST)
    handler = CommandHandler(client, store, AgentHooks())
    stop = asyncio.Event()
    tasks = [asyncio.create_task(client.run(stop)), asyncio.create_task(handler.run(stop))]
    try:
        await until(lambda: client.connected, "the device to connect")
        yield Device(client, store)
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 10)
        store.close()


def fleet_settings(mqtt: MqttSection, smtp_port: int, state: Path) -> FleetSettings:
    return FleetSettings(
        mqtt=mqtt,
        smtp=SmtpSection(host="127.0.0.1", port=smtp_port, from_address="alerts@provider.example"),
        notifier=NotifierSection(state_file=state, support_emails=[SUPPORT], retry_s=0.2),
    )


SITES = SiteBook.model_validate({"sites": {SITE: {"name": "Acme Dental", "emails": [CUSTOMER]}}})


class RunningNotifier:
    def __init__(self, settings: FleetSettings) -> None:
        self.state = NotifierState(settings.notifier.state_file)
        self.notifier = Notifier(settings, SITES, self.state, SmtpMailer(settings.smtp).send)
        self.stop = asyncio.Event()
        self.task = asyncio.create_task(self.notifier.run(self.stop))

    async def started(self) -> None:
        await until(lambda: self.notifier.client is not None, "the notifier's client")
        assert self.notifier.client is not None
        await asyncio.wait_for(self.notifier.client.subscribed.wait(), 5)

    async def close(self) -> None:
        self.stop.set()
        await asyncio.wait_for(self.task, 10)
        self.state.close()


def failover(store: Store, at: float) -> int:
    return store.append_event(Event(EventKind.FAILOVER, at, {"reason": "primary down"}))


def failback(store: Store, at: float, **data: Any) -> int:
    return store.append_event(Event(EventKind.FAILBACK, at, {"reason": "primary healthy", **data}))


async def test_one_mail_per_failover_and_per_recovery_across_replay_reconnect_restart(
    broker, certs, device, smtp, tmp_path
):
    inbox, smtp_port = smtp
    # The notifier reaches the broker through a relay, so the test can cut its path alone.
    relay = TcpRelay("127.0.0.1", broker.tls_port or 0)
    await relay.release()
    settings = fleet_settings(
        mqtt_settings(broker, certs["fleet-notifier"], port=relay.port),
        smtp_port,
        tmp_path / "notifier.db",
    )
    notifier = RunningNotifier(settings)
    try:
        await notifier.started()
        # Usage before the outage (telemetry), then the failover.
        device.client.publish_telemetry(
            {"mode": "PRIMARY", "usage": {"used_bytes": 100_000_000, "cap_bytes": 2_000_000_000}}
        )
        await until(lambda: "usage" in _doc(notifier.state, SITE), "the usage figure")
        started = time.time()
        failover(device.store, started)
        await until(lambda: len(inbox.messages) == 1, "the failover mail")
        recipients, mail = inbox.messages[0]
        assert sorted(recipients) == sorted([CUSTOMER, SUPPORT])
        assert "Acme Dental" in str(mail["Subject"]) and "LTE backup" in str(mail["Subject"])
        assert "Why: primary down" in mail.get_payload()

        # A replay of everything: the failover comes again, no second mail.
        with peer(broker, [topic(SITE, Channel.CMD_RES)], cert=certs["fleet-console"]) as fleet:
            command = {"v": 1, "id": "replay-1", "name": "replay_events",
                       "args": {"from_seq": 1}, "expires_wall_s": time.time() + 60}  # fmt: skip
            fleet.publish(topic(SITE, Channel.CMD_REQ), json.dumps(command))
            await until(lambda: fleet.on(topic(SITE, Channel.CMD_RES))[-1:], "the replay answer")
        await until(lambda: not device.store.unpublished_events(), "the replay delivered")
        # Usage during the outage (QoS 0: it is not kept for an absent notifier).
        device.client.publish_telemetry(
            {"mode": "CELLULAR", "usage": {"used_bytes": 145_200_000, "cap_bytes": 2_000_000_000}}
        )
        await until(
            lambda: _doc(notifier.state, SITE)["usage"]["used_bytes"] == 145_200_000, "usage"
        )
        # The notifier's path is cut: the recovery happens while it cannot hear.
        await relay.cut()
        assert notifier.notifier.client is not None
        await until(lambda: not notifier.notifier.client.connected, "the notifier to notice")
        failback(device.store, started + 4000.0)
        await until(lambda: not device.store.unpublished_events(), "the broker to take it")
        await relay.release()  # it comes back: its session kept the event for it
        await until(lambda: len(inbox.messages) == 2, "the recovery mail", timeout_s=10)
        recovery = inbox.messages[1][1]
        assert "primary link back after 1 h 7 min" in str(recovery["Subject"])
        body = recovery.get_payload()
        assert "Outage: 1 h 7 min" in body
        assert "LTE data used during the outage: 45.2 MB (from usage reports)" in body
    finally:
        await notifier.close()
        await relay.close()

    # The notifier restarts (same state file) and the device replays everything again.
    again = RunningNotifier(fleet_settings(
        mqtt_settings(broker, certs["fleet-notifier"]), smtp_port, tmp_path / "notifier.db"
    ))  # fmt: skip
    try:
        await again.started()
        device.client.outbox.replay(1)
        device.client.wake()
        await until(lambda: not device.store.unpublished_events(), "the second replay")
        await until(lambda: again.notifier.duplicates >= 2, "the replayed events to arrive")
        assert _seen(again.state) == again.notifier.events  # every one was seen before
        assert len(inbox.messages) == 2  # de-duplicated by device + epoch + seq
        assert [m["sent"] for m in again.state.mails()] == [True, True]
    finally:
        await again.close()


async def test_an_smtp_outage_delays_the_mail_and_loses_nothing(
    broker, certs, device, smtp, tmp_path
):
    inbox, smtp_port = smtp
    inbox.refuse = True
    settings = fleet_settings(
        mqtt_settings(broker, certs["fleet-notifier"]), smtp_port, tmp_path / "n.db"
    )
    notifier = RunningNotifier(settings)
    try:
        await notifier.started()
        failback(device.store, time.time(), on_cellular_s=75.0, cellular_bytes=2_500_000)
        await until(
            lambda: [m for m in notifier.state.mails() if m["attempts"] >= 1], "a failed attempt"
        )
        assert "did not take the mail" in (notifier.state.mails()[0]["last_error"] or "")
        inbox.refuse = False
        await until(lambda: len(inbox.messages) == 1, "the mail after the outage", timeout_s=10)
        body = inbox.messages[0][1].get_payload()
        assert "Outage: 1 min" in body and "during the outage: 2.5 MB\r\n" in body
    finally:
        await notifier.close()


async def test_fleet_watch_once_json_shows_the_site(broker, certs, device, tmp_path, capsys):
    device.client.publish_state({"mode": "CELLULAR", "since": time.time() - 60})
    device.client.publish_telemetry(
        {
            "mode": "CELLULAR",
            "links": {"primary": {"verdict": "down"}, "cellular": {"verdict": "up", "mos": 4.1}},
            "signal": {"rsrp_dbm": -97.0, "bars": 3},
            "usage": {"used_bytes": 300_000_000, "cap_bytes": 2_000_000_000},
        }
    )
    cert = certs["fleet-console"]
    assert broker.tls_files is not None
    config = tmp_path / "fleet.toml"
    config.write_text(
        f"""
[mqtt]
host = "127.0.0.1"
port = {broker.tls_port}
ca_file = "{broker.tls_files.ca_file}"
cert_file = "{cert[0]}"
key_file = "{cert[1]}"
[watch]
client_id = "fleet-console"
"""
    )
    with peer(broker, [topic(SITE, Channel.TELE)], cert=cert) as fleet:  # it is retained now
        await until(lambda: fleet.on(topic(SITE, Channel.TELE)), "the telemetry")
    code = await asyncio.to_thread(
        cli.main, ["fleet", "watch", "--once", "--json", "--config", str(config)]
    )
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["ok"] is True
    site = next(s for s in out["sites"] if s["device_id"] == SITE)
    assert site["online"] is True and site["mode"] == "CELLULAR" and site["link"] == "lte"
    assert site["links"]["cellular"] == {"verdict": "up", "mos": 4.1}
    assert site["signal"] == {"rsrp_dbm": -97.0, "bars": 3}
    assert site["usage"]["used_bytes"] == 300_000_000
    assert site["last_seen_wall_s"] is not None


def test_fleet_view_table_and_bad_messages():
    view = FleetView()
    view.apply("cpe/v1/site-x/state", b'{"v":1,"online":true,"mode":"PRIMARY"}', 100.0)
    view.apply("cpe/v1/site-x/tele", b'{"v":1,"wall_time_s":90,"usage":{"used_bytes":5}}', 100.0)
    view.apply("cpe/v1/site-x/evt", b"not json", 100.0)
    view.apply("cpe/v1/site-y/state", b'{"v":1,"online":false}', 100.0)
    view.apply("elsewhere/x", b"{}", 100.0)
    assert view.malformed == 2
    rows = {r["device_id"]: r for r in view.as_json()["sites"]}
    assert rows["site-x"]["link"] == "primary" and rows["site-x"]["last_seen_wall_s"] == 100.0
    assert rows["site-y"]["online"] is False and rows["site-y"]["last_seen_wall_s"] is None
    assert view.table(200.0).row_count == 2


def test_fleet_config_files_are_checked_with_one_sentence_each(tmp_path):
    from agent.config import ConfigError

    path = tmp_path / "fleet.toml"
    path.write_text(
        '[mqtt]\nhost = "b"\n[notifier]\nsupport_emails = ["not-an-address"]\n[smtpp]\n'
    )
    with pytest.raises(ConfigError) as err:
        load_fleet_settings(path)
    assert len(err.value.problems) == 2
    assert all(p.startswith(str(path)) and p.endswith(".") for p in err.value.problems)
    sites = tmp_path / "sites.toml"
    sites.write_text('[sites.Bad_Id]\nemails = ["a@b.example"]\n')
    with pytest.raises(ConfigError, match="device ids"):
        load_sites(sites)
    assert duration_text(None) == "unknown" and duration_text(30) == "30 s"
    assert duration_text(90_000) == "1 d 1 h 0 min"


def _doc(state: NotifierState, device: str) -> dict[str, Any]:
    with state.transaction() as db:
        return NotifierState.site_doc(db, device)


def _seen(state: NotifierState) -> int:
    with state.transaction() as db:
        return int(db.execute("SELECT COUNT(*) FROM seen").fetchone()[0])
