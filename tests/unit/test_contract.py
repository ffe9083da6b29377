"""The MQTT contract (topics and payloads, v1), from tables: no broker, no clock."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from agent.telemetry.contract import (
    LATE_AFTER_S,
    OFFLINE_STATE,
    Channel,
    ContractError,
    EventPayload,
    StatePayload,
    TelemetryPayload,
    event_message,
    json_schemas,
    online_state,
    parse_topic,
    telemetry_message,
    topic,
)

EPOCH = "0a1b2c3d"


@pytest.mark.parametrize(
    ("device_id", "channel", "expected"),
    [
        ("site-1", Channel.STATE, "cpe/v1/site-1/state"),
        ("a", Channel.EVT, "cpe/v1/a/evt"),
        ("0-9", Channel.TELE, "cpe/v1/0-9/tele"),
        ("x" * 63, Channel.EVT, f"cpe/v1/{'x' * 63}/evt"),
    ],
)
def test_topics(device_id, channel, expected):
    assert topic(device_id, channel) == expected
    assert parse_topic(expected) == (device_id, channel)


@pytest.mark.parametrize(
    "device_id",
    ["", "Site-1", "-site", "site/1", "site+", "site#", "site 1", "sité", "x" * 64],
)
def test_device_ids_that_would_break_topics_are_refused(device_id):
    with pytest.raises(ContractError, match="device id"):
        topic(device_id, Channel.STATE)


@pytest.mark.parametrize(
    "name",
    ["cpe/v2/site/evt", "cpe/v1/site/cmd", "cpe/v1/site", "cpe/v1/site/evt/x", "x/v1/site/evt"],
)
def test_topics_outside_the_contract_are_refused(name):
    with pytest.raises(ContractError):
        parse_topic(name)


def test_birth_and_will_payloads():
    birth = online_state({"mode": "CELLULAR", "since": 1_800_000_000.123456})
    assert json.loads(birth.to_json()) == {
        "v": 1,
        "online": True,
        "mode": "CELLULAR",
        "since": 1_800_000_000.123,
    }
    assert OFFLINE_STATE.to_json() == b'{"v":1,"online":false}'
    assert json.loads(online_state({}).to_json()) == {"v": 1, "online": True}


@pytest.mark.parametrize(
    ("state", "problem"),
    [
        ({"mdoe": "PRIMARY"}, ContractError),  # a misspelt key fails loudly
        ({"mode": "SIDEWAYS"}, ValidationError),
        ({"mode": "PRIMARY", "since": "yesterday"}, ValueError),
    ],
)
def test_bad_state_is_refused(state, problem):
    with pytest.raises(problem):
        online_state(state)


@pytest.mark.parametrize(
    ("age_s", "late"),
    [
        (0.0, None),
        (LATE_AFTER_S, None),  # exactly at the limit is still on time
        (LATE_AFTER_S + 0.001, True),
        (86_400.0, True),
        (-5.0, None),  # the wall clock stepped back: not late
    ],
)
def test_events_are_late_only_long_after_they_happened(age_s, late):
    message = event_message(
        epoch=EPOCH,
        seq=7,
        kind="failover",
        wall_time_s=1_800_000_000.0,
        data={"reason": "primary down", "on_cellular_s": None},
        now_wall_s=1_800_000_000.0 + age_s,
    )
    body = json.loads(message.to_json())
    assert body.get("late") == late
    assert ("late" in body) == (late is True)
    assert body["v"] == 1 and body["epoch"] == EPOCH and body["seq"] == 7
    assert body["kind"] == "failover" and body["wall_time_s"] == 1_800_000_000.0
    # None inside data is a fact ("unknown") and survives; only absent fields are dropped.
    assert body["data"] == {"reason": "primary down", "on_cellular_s": None}


@pytest.mark.parametrize(
    "fields",
    [
        {"epoch": "XYZ", "seq": 1, "kind": "failover"},  # epoch is lower-case hex
        {"epoch": EPOCH, "seq": 0, "kind": "failover"},  # seq starts at 1
        {"epoch": EPOCH, "seq": 1, "kind": "Fail Over"},
    ],
)
def test_malformed_events_are_refused(fields):
    with pytest.raises(ValidationError):
        EventPayload(wall_time_s=1.0, **fields)


def test_readers_ignore_fields_they_do_not_know_but_not_another_version():
    newer = {"v": 1, "online": True, "mode": "PRIMARY", "firmware": "7.15"}
    assert StatePayload.model_validate(newer).mode == "PRIMARY"
    with pytest.raises(ValidationError):
        StatePayload.model_validate({"v": 2, "online": True})
    event = {"v": 1, "epoch": EPOCH, "seq": 3, "kind": "sim_swapped", "wall_time_s": 1.0}
    assert EventPayload.model_validate(event).kind == "sim_swapped"  # kinds can grow


def test_telemetry_keeps_the_contract_fields_of_the_status_figures():
    figures = {
        "verdict": "degraded",
        "reason": "loss 5%",
        "loss_pct": 5.0,
        "rtt_ms": 48.123456,
        "jitter_ms": None,
        "mos": 3.91234,
        "r_factor": 80.1,
        "targets_up": 2,
        "targets_total": 2,
        "sip_targets_up": 1,
        "carrier_up": True,
    }
    message = telemetry_message(
        wall_time_s=1_800_000_000.0004, links={"primary": figures}, mode="DEGRADED"
    )
    assert json.loads(message.to_json()) == {
        "v": 1,
        "wall_time_s": 1_800_000_000.0,
        "mode": "DEGRADED",
        "links": {
            "primary": {
                "verdict": "degraded",
                "loss_pct": 5.0,
                "rtt_ms": 48.12,
                "mos": 3.91,
                "carrier_up": True,
            }
        },
    }
    with pytest.raises(ValidationError):
        telemetry_message(wall_time_s=1.0, links={"wifi": {"verdict": "up"}})
    assert TelemetryPayload.model_validate_json(message.to_json()) == message


def test_each_channel_has_a_json_schema():
    schemas = json_schemas()
    assert set(schemas) == {"state", "evt", "tele"}
    assert schemas["evt"]["required"] == ["epoch", "seq", "kind", "wall_time_s"]
    assert schemas["state"]["properties"]["v"]["const"] == 1
