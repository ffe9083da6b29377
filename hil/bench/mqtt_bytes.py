"""MQTT bytes on LTE: what a month of standby and a day in failover cost on the wire.

    python -m hil.bench.mqtt_bytes --json

Measured, not guessed: a real mosquitto on loopback with TLS (TLS 1.3, a throwaway CA,
ECDSA P-256 client and server certificates, the project's ACL), the agent's own
TelemetryClient with its CommandHandler (so it subscribes to `cmd/req` and `cfg/des`
as in the field), on the `cellular` uplink. Bytes are read at the client's socket
(`TCP_INFO`: TCP payload - TLS records and all - plus 52 bytes of IPv4/TCP headers
per segment, acknowledgements included) and the payload is cross-checked against a
counting relay in front of the broker.

Why extrapolate: a month cannot be waited for, and paho's keepalive runs on its own
real clock, so compressing time would change what is measured. Instead the bench
measures each unit of traffic on the wire - one connection set-up, one keepalive
round trip, one telemetry message with 1 and with 12 samples, one event, one state
message - and multiplies by how often the agent's actual schedule produces each:
the counts come from running `TelemetrySchedule` (the client's own decision code)
over a synthetic month and day on a simulated clock (one sample a minute, as the
agent offers them), and from the keepalive and reconnect assumptions printed in the
result. Loopback differs from LTE in one way that matters little here: no
retransmissions and no carrier framing; carriers bill IP bytes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import random
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.config import MqttSection
from agent.domain import Event, EventKind
from agent.store import Store
from agent.telemetry import contract
from agent.telemetry.commands import AgentHooks, CommandHandler
from agent.telemetry.contract import Channel, TelemetrySample
from agent.telemetry.mqtt import MqttOptions, TelemetryClient
from agent.telemetry.schedule import TelemetryPolicy, TelemetrySchedule
from hil.sims.mosquitto import DEVICE_ACL, Mosquitto, TcpRelay, issue_client_cert

DEVICE = "bench-site"
MONTH_S = 30 * 86_400
DAY_S = 86_400
TARGET_STANDBY_BYTES = 2_000_000
#: Reconnects a month on LTE: carrier IP changes, NAT resets, re-attaches (one a day).
RECONNECTS_PER_MONTH = 30
#: Events in a quiet month (drift checks, an agent restart, a threshold ...).
STANDBY_EVENTS_PER_MONTH = 30
#: A day in failover: failover, failback, mode changes, a meter threshold, a test ...
FAILOVER_DAY_EVENTS = 10
FAILOVER_DAY_STATES = 4


def _realistic_sample(
    t: float, rtt_ms: float, rsrp_dbm: float, used: int, mode: str
) -> TelemetrySample:
    return contract.telemetry_sample(
        wall_time_s=1_800_000_000.0 + t,
        mode=mode,
        links={
            "primary": {"verdict": "down" if mode != "PRIMARY" else "up", "carrier_up": True,
                        "loss_pct": 100.0 if mode != "PRIMARY" else 0.0},
            "cellular": {"verdict": "up", "loss_pct": 0.0, "rtt_ms": rtt_ms, "jitter_ms": 4.2,
                         "mos": 4.21},
        },
        signal={"rsrp_dbm": rsrp_dbm, "rsrq_db": -11.0, "sinr_db": 13.5, "technology": "lte",
                "bars": 3},
        usage={"used_bytes": used, "cap_bytes": 2_000_000_000, "percent": round(used / 2e7, 1),
               "overage_usd": 0.0, "projected_bytes": used + 40_000_000,
               "projected_overage_usd": 0.0, "minutes_left": 1512.0, "lte_hours": 3.5,
               "cycle_start": "2026-11-01T00:00:00-05:00", "clock_trusted": True},
        agent={"uptime_s": int(t) + 86_400, "backlog": 0, "events_dropped": 0,
               "mqtt_lte_bytes": 123_456, "mqtt": "5"},
    )  # fmt: skip


# -- the schedule, on a simulated clock ---------------------------------------------------


def run_schedule(
    policy: TelemetryPolicy, duration_s: float, figures: Callable[[float], TelemetrySample]
) -> dict[str, Any]:
    """Offer one sample a minute to the agent's TelemetrySchedule; count what it sends."""
    schedule = TelemetrySchedule(policy)
    messages, samples, sizes = 0, 0, []
    t = 0.0
    while t < duration_s:
        schedule.offer(figures(t), t)
        due = schedule.due(t, cellular=True)
        if due is not None:
            schedule.sent(due, t)
            messages += 1
            samples += len(due.samples)
            sizes.append(len(due.samples))
        t += 60.0
    return {"messages": messages, "samples": samples, "max_batch": max(sizes, default=0)}


def standby_figures(seed: int) -> Callable[[float], TelemetrySample]:
    """Idle LTE: radio and RTT wobble inside their dead bands; probes use a little data."""
    rng = random.Random(seed)

    def figures(t: float) -> TelemetrySample:
        used = 50_000_000 + int(t * 2)  # ~5 MB a month of probes
        return _realistic_sample(t, 60 + rng.uniform(-8, 8), -95 + rng.uniform(-3, 3), used,
                                 "CELLULAR")  # fmt: skip

    return figures


def failover_figures(seed: int) -> Callable[[float], TelemetrySample]:
    """A busy day on LTE: calls 8:00-18:00 (RTT moves, 1.2 MB per call-minute), radio
    changes a few times, a short dip in the afternoon."""
    rng = random.Random(seed)
    state = {"used": 300_000_000, "rsrp": -95.0}

    def figures(t: float) -> TelemetrySample:
        hour = (t / 3600) % 24
        calls = rng.choice((0, 1, 1, 2, 3)) if 8 <= hour < 18 else 0
        state["used"] += int(calls * 1_200_000)
        if rng.random() < 0.01:
            state["rsrp"] = -95.0 + rng.choice((-12, -6, 0, 6))
        rtt = 60 + calls * rng.uniform(0, 40)
        return _realistic_sample(t, rtt, state["rsrp"], state["used"], "CELLULAR")

    return figures


# -- measuring units on the wire ----------------------------------------------------------


class PingCounter(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.pings = 0

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("Sending PINGREQ"):
            self.pings += 1


async def _until(check: Callable[[], Any], what: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"the benchmark timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def _settled(client: TelemetryClient, quiet_s: float = 0.3) -> int:
    """The socket's LTE total once nothing has moved for `quiet_s` (trailing ACKs in)."""
    last, since = client.lte_wire_bytes, time.monotonic()
    while time.monotonic() - since < quiet_s:
        await asyncio.sleep(0.05)
        now = client.lte_wire_bytes
        if now != last:
            last, since = now, time.monotonic()
    return last


async def measure(workdir: Path, ping_samples: int) -> dict[str, Any]:
    broker = Mosquitto(workdir / "broker", tls=True, acl=DEVICE_ACL, plain=False)
    broker.start()
    assert broker.tls_files is not None and broker.tls_port is not None
    cert, key = issue_client_cert(broker.tls_files, DEVICE)
    relay = TcpRelay("127.0.0.1", broker.tls_port)
    await relay.release()
    store = Store(workdir / "agent.db")
    pings = PingCounter()
    paho_logger = logging.getLogger("agent.telemetry.mqtt.paho")
    paho_logger.addHandler(pings)
    paho_logger.setLevel(logging.DEBUG)
    paho_logger.propagate = False
    settings = MqttSection(
        host="127.0.0.1", port=relay.port, tls=True, ca_file=broker.tls_files.ca_file,
        cert_file=cert, key_file=key,
    )  # fmt: skip
    # Production defaults, except a 1 s keepalive so the bench can count round trips.
    options = MqttOptions.from_settings(settings, keepalive_cellular_s=1, poll_s=0.2)
    client = TelemetryClient(settings, DEVICE, store, options=options)
    client.set_uplink("cellular")
    handler = CommandHandler(client, store, AgentHooks())
    client.publish_state({"mode": "CELLULAR", "since": 1_800_000_000.0})
    stop = asyncio.Event()
    tasks = [asyncio.create_task(client.run(stop)), asyncio.create_task(handler.run(stop))]
    units: dict[str, float] = {}
    try:
        await _until(lambda: client.connected, "the TLS connection")
        pings.pings = 0
        connect_bytes = await _settled(client, quiet_s=0.6)
        base, pings_before = connect_bytes, pings.pings
        await _until(
            lambda: pings.pings >= pings_before + ping_samples,
            "the keepalives",
            timeout_s=ping_samples * 3 + 5,
        )
        after = await _settled(client, quiet_s=0.2)
        units["keepalive"] = (after - base) / (pings.pings - pings_before)
        # A keepalive may have fallen inside the connection's settle window: take it out.
        units["connect"] = connect_bytes - units["keepalive"] * pings_before

        async def cost(action: Callable[[], Any], done: Callable[[], Any] | None = None) -> float:
            """Bytes one action puts on the wire, less any keepalive meanwhile."""
            before, p0 = await _settled(client, quiet_s=0.25), pings.pings
            action()
            if done is not None:
                await _until(done, "the broker's acknowledgement")
            spent = await _settled(client, quiet_s=0.25) - before
            return spent - (pings.pings - p0) * units["keepalive"]

        assert client._link is not None
        link = client._link
        # Telemetry: one sample, and a full batch (the largest an LTE message gets).
        one = contract.telemetry_batch([_realistic_sample(0, 61.2, -95.0, 123_456_789, "CELLULAR")])
        full = contract.telemetry_batch(
            [
                _realistic_sample(n * 60, 61.2 + n, -95.0, 123_456_789 + n, "CELLULAR")
                for n in range(12)
            ]
        )
        for name, message in (("tele_1_sample", one), ("tele_12_samples", full)):
            payload = message.to_json()
            spent = [await cost(lambda p=payload: client._publish(link, Channel.TELE, p))
                     for _ in range(3)]  # fmt: skip
            units[name] = sum(spent) / len(spent)
            units[f"{name}_payload"] = len(payload)
        # Events (QoS 1: PUBLISH, PUBACK and their TCP acknowledgements).
        event = {"from": "DEGRADED", "to": "CELLULAR", "reason": "primary down",
                 "switch_ms": 212.4, "conntrack_flushed": 3}  # fmt: skip
        spent = [
            await cost(
                lambda n=n: store.append_event(
                    Event(EventKind.FAILOVER, time.time(), {**event, "n": n})
                ),
                lambda: not store.unpublished_events(),
            )
            for n in range(5)
        ]
        units["event"] = sum(spent) / len(spent)
        spent = [
            await cost(lambda n=n: client.publish_state({"mode": "CELLULAR", "since": 1.8e9 + n}))
            for n in range(3)
        ]
        units["state"] = sum(spent) / len(spent)
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        totals = client.wire_totals()
        await asyncio.sleep(0.1)
        check = {
            "socket_payload_out": totals.payload_out,
            "relay_bytes_up": relay.bytes_up,
            "socket_payload_in": totals.payload_in,
            "relay_bytes_down": relay.bytes_down,
        }
        await relay.close()
        store.close()
        broker.close()
        paho_logger.removeHandler(pings)
    return {"units": {k: round(v) for k, v in units.items()}, "check": check}


def extrapolate(units: dict[str, float], options: MqttOptions) -> dict[str, Any]:
    policy = TelemetryPolicy(
        heartbeat_s=options.heartbeat_s,
        heartbeat_cellular_s=options.heartbeat_cellular_s,
        batch_cellular_s=options.batch_cellular_s,
    )
    per_sample = (units["tele_12_samples"] - units["tele_1_sample"]) / 11

    def tele_bytes(run: dict[str, Any]) -> float:
        extra_samples = run["samples"] - run["messages"]
        return run["messages"] * units["tele_1_sample"] + extra_samples * per_sample

    standby = run_schedule(policy, MONTH_S, standby_figures(1))
    keepalives_month = MONTH_S / options.keepalive_cellular_s
    month = {
        "connects": RECONNECTS_PER_MONTH * units["connect"],
        "keepalives": keepalives_month * units["keepalive"],
        "telemetry": tele_bytes(standby),
        "events": STANDBY_EVENTS_PER_MONTH * units["event"],
    }
    busy = run_schedule(policy, DAY_S, failover_figures(2))
    day = {
        "connects": 2 * units["connect"],  # at the failover, and one carrier hiccup
        "keepalives": DAY_S / options.keepalive_cellular_s * units["keepalive"],
        "telemetry": tele_bytes(busy),
        "events": FAILOVER_DAY_EVENTS * units["event"],
        "states": FAILOVER_DAY_STATES * units["state"],
    }
    return {
        "standby_lte_bytes_per_month": round(sum(month.values())),
        "failover_day_bytes": round(sum(day.values())),
        "standby_breakdown_bytes": {k: round(v) for k, v in month.items()},
        "failover_day_breakdown_bytes": {k: round(v) for k, v in day.items()},
        "schedule": {
            "keepalive_cellular_s": options.keepalive_cellular_s,
            "heartbeat_cellular_s": options.heartbeat_cellular_s,
            "batch_cellular_s": options.batch_cellular_s,
            "standby_month_tele": standby,
            "failover_day_tele": busy,
            "keepalives_per_month": round(keepalives_month),
        },
        "assumptions": {
            "reconnects_per_month_on_lte": RECONNECTS_PER_MONTH,
            "standby_events_per_month": STANDBY_EVENTS_PER_MONTH,
            "failover_day_connects": 2,
            "failover_day_events": FAILOVER_DAY_EVENTS,
            "failover_day_state_messages": FAILOVER_DAY_STATES,
            "telemetry_offered_every_s": 60,
        },
    }


def run(ping_samples: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="cpe-mqtt-bytes-") as tmp:
        measured = asyncio.run(measure(Path(tmp), ping_samples))
    options = MqttOptions.from_settings(MqttSection(host="broker"))
    result = extrapolate(measured["units"], options)
    check = measured["check"]
    return {
        **result,
        "target_standby_lte_bytes_per_month": TARGET_STANDBY_BYTES,
        "meets_target": result["standby_lte_bytes_per_month"] <= TARGET_STANDBY_BYTES,
        "unit_bytes_on_wire": measured["units"],
        "socket_matches_relay": check["socket_payload_out"] == check["relay_bytes_up"]
        and check["socket_payload_in"] == check["relay_bytes_down"],
        "relay_check": check,
        "method": "units measured on loopback TLS 1.3 (socket TCP_INFO + 52 B/segment), "
        "multiplied by the agent's TelemetrySchedule run on a simulated month and day",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print only the JSON object")
    parser.add_argument("--ping-samples", type=int, default=5, help="keepalives to measure")
    args = parser.parse_args(argv)
    result = run(args.ping_samples)
    print(json.dumps(result, indent=None if args.json else 2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
