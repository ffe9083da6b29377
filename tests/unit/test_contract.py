"""The MQTT contract (topics and payloads, v1), from tables: no broker, no clock."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from agent.config import HealthSection
from agent.telemetry import schemas
from agent.telemetry.contract import (
    DEVICE_PUBLISHES,
    DEVICE_SUBSCRIBES,
    LATE_AFTER_S,
    OFFLINE_STATE,
    QOS,
    RETAIN,
    Channel,
    CommandResult,
    CommandStatus,
    ContractError,
    DesiredConfig,
    EventPayload,
    StatePayload,
    TelemetryPayload,
    Thresholds,
    check_desired,
    command_result,
    event_message,
    json_schemas,
    online_state,
    parse_topic,
    schema_files,
    telemetry_batch,
    telemetry_message,
    telemetry_sample,
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
        ("site-1", Channel.CFG_DES, "cpe/v1/site-1/cfg/des"),
        ("site-1", Channel.CFG_REP, "cpe/v1/site-1/cfg/rep"),
        ("site-1", Channel.CMD_REQ, "cpe/v1/site-1/cmd/req"),
        ("site-1", Channel.CMD_RES, "cpe/v1/site-1/cmd/res"),
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
    [
        "cpe/v2/site/evt",
        "cpe/v1/site/cmd",
        "cpe/v1/site",
        "cpe/v1/site/evt/x",
        "x/v1/site/evt",
        "cpe/v1/site/cmd/req/x",
        "cpe/v1/+/evt",
        "cpe/v1/Site/evt",
    ],
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


def test_every_channel_has_a_direction_qos_and_retain_flag():
    assert set(DEVICE_PUBLISHES) | set(DEVICE_SUBSCRIBES) == set(Channel)
    assert not set(DEVICE_PUBLISHES) & set(DEVICE_SUBSCRIBES)
    assert set(QOS) == set(RETAIN) == set(Channel)
    # Retained: what a newcomer needs at once (state, figures, config); never a command.
    retained = {c for c in Channel if RETAIN[c]}
    assert retained == {Channel.STATE, Channel.TELE, Channel.CFG_DES, Channel.CFG_REP}


def test_each_channel_and_command_has_a_json_schema():
    found = json_schemas()
    assert {"state", "evt", "tele", "cfg-des", "cfg-rep", "cmd-req", "cmd-res"} <= set(found)
    assert {n for n in found if n.startswith("cmd-args-")} == {
        "cmd-args-run_failover_test",
        "cmd-args-set_thresholds",
        "cmd-args-reset_meter",
        "cmd-args-replay_events",
    }
    assert found["evt"]["required"] == ["epoch", "seq", "kind", "wall_time_s"]
    assert found["state"]["properties"]["v"]["const"] == 1
    assert found["cmd-req"]["required"] == ["id", "name", "expires_wall_s"]


def test_the_committed_schemas_match_the_models():
    """docs/schemas/ is what the fleet side builds against: it must be the models'."""
    assert schemas.stale(schemas.DEFAULT_DIR) == [], (
        "run `python -m agent.telemetry.schemas` and commit docs/schemas/"
    )
    assert set(schema_files()) == {p.name for p in schemas.DEFAULT_DIR.glob("*.json")}


def test_remote_thresholds_stay_inside_what_the_config_file_allows():
    """A threshold the fleet may set must be one the config file accepts too."""
    for name, info in Thresholds.model_fields.items():
        if not name.startswith("degraded_"):
            continue
        bounds = {type(m).__name__: m for m in info.metadata}
        low = bounds["Ge"].ge
        high = bounds["Le"].le
        HealthSection(**{name: low})
        HealthSection(**{name: high})


def test_telemetry_batches_carry_the_latest_on_top_and_what_was_dropped():
    samples = [
        telemetry_sample(
            wall_time_s=float(t), mode="CELLULAR", links={"cellular": {"verdict": "up"}}
        )
        for t in (1, 2, 3)
    ]
    message = telemetry_batch(samples, dropped=4)
    body = json.loads(message.to_json())
    assert body["wall_time_s"] == 3.0 and body["dropped"] == 4
    assert [s["wall_time_s"] for s in body["earlier"]] == [1.0, 2.0]
    assert "earlier" not in json.loads(telemetry_batch(samples[:1]).to_json())
    with pytest.raises(ContractError):
        telemetry_batch([])
    with pytest.raises(ContractError, match="unknown keys"):
        telemetry_sample(wall_time_s=1.0, wifi={})
    full = telemetry_sample(
        wall_time_s=1.0,
        signal={"rsrp_dbm": -95.123, "sinr_db": 12.0, "imei": "not for the fleet"},
        usage={"used_bytes": 123_456_789, "cap_bytes": 2_000_000_000},
        agent={"backlog": 0, "mqtt_lte_bytes": 1234, "mqtt": "5"},
    )
    assert json.loads(full.model_dump_json(exclude_none=True)) == {
        "wall_time_s": 1.0,
        "links": {},
        "signal": {"rsrp_dbm": -95.12, "sinr_db": 12.0},
        "usage": {"used_bytes": 123_456_789, "cap_bytes": 2_000_000_000},
        "agent": {"backlog": 0, "mqtt_lte_bytes": 1234, "mqtt": "5"},
    }


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        (b"{", "not valid JSON"),
        (b'{"v":1}', "version"),
        (b'{"v":1,"version":0}', "version"),
        (b'{"v":1,"version":1,"thresholds":{"degraded_mos":5}}', "degraded_mos"),
        (b'{"v":1,"version":1,"thresholds":{"nope":5}}', "nope"),
        (b'{"v":1,"version":1,"pad":"' + b"x" * 5000 + b'"}', "too large"),
    ],
)
def test_broken_desired_configs_are_one_sentence(raw, problem):
    with pytest.raises(ContractError, match=problem):
        check_desired(raw)


def test_desired_and_results_round_trip():
    desired = check_desired(b'{"v":1,"version":2,"thresholds":{"degraded_rtt_ms":250}}')
    assert desired == DesiredConfig(version=2, thresholds=Thresholds(degraded_rtt_ms=250))
    result = command_result("c-9", CommandStatus.FAILED, now_wall_s=5.0, reason="r" * 400)
    assert len(result.reason or "") == 300
    assert CommandResult.model_validate_json(result.to_json()) == result
    assert [s.final for s in CommandStatus] == [False, False, True, True, True, True]
