"""RouterOS reply parsers, from literal replies (as the wire carries them)."""

from __future__ import annotations

import ipaddress
from datetime import datetime

import pytest

from drivers.router.routeros import parse
from drivers.types import LinkEvent, RouterIdentity, VoipPolicy

POLICY = VoipPolicy(primary_interface="ether1", cellular_interface="ether10",
                    cellular_gateway="192.168.5.1", lan_interfaces=("bridge",),
                    voip_prefixes=("203.0.113.10/32",))
NETS = (ipaddress.IPv4Network("203.0.113.10/32"),)


def test_reply_keeps_strings_and_skips_empty() -> None:
    sentences = [
        ("!re", (".tag=7", "=.id=*1A", "=comment=007", "=disabled=true", "=name=1")),
        ("!re", ("=comment=a=b=c",)),
        ("!empty", (".tag=7",)),
        ("!done", ("=ret=*2B",)),
    ]
    reply = parse.reply(sentences)
    # librouteros would have made these True, 7 and 1: raw reading keeps what was sent.
    assert reply.rows == [{".id": "*1A", "comment": "007", "disabled": "true", "name": "1"},
                          {"comment": "a=b=c"}]
    assert reply.ret == "*2B" and reply.traps == [] and reply.unknown == []


def test_reply_collects_traps() -> None:
    reply = parse.reply([
        ("!trap", ("=category=0", "=message=no such command or directory (tabel)")),
        ("!trap", ("=message=no such command prefix",)),
        ("!done", ()),
    ])
    assert reply.traps == [("no such command or directory (tabel)", "0"),
                           ("no such command prefix", None)]
    assert parse.trap_text(reply.traps).endswith("no such command prefix")


@pytest.mark.parametrize(("text", "seconds"), [
    ("1w2d3h4m5s", 604800 + 2 * 86400 + 3 * 3600 + 4 * 60 + 5),
    ("12ms345us", 0.012345),
    ("12ms", 0.012),
    ("345us", 0.000345),
    ("00:05:00", 300),
    ("1d02:03:04", 86400 + 7384),
    ("2m59s", 179),
    ("35w", 35 * 604800),
    ("0s", 0),
    ("10", 10),
    ("", None),
    ("soon", None),
    ("5m soon", None),
    (None, None),
])
def test_durations(text: str | None, seconds: float | None) -> None:
    got = parse.duration_s(text)
    assert got == (pytest.approx(seconds) if seconds is not None else None)


@pytest.mark.parametrize(("text", "version"), [
    ("7.18.2 (stable)", (7, 18, 2)),
    ("6.49.17 (long-term)", (6, 49, 17)),
    ("7.19rc2 (testing)", (7, 19)),
    ("", None),
    ("stable", None),
])
def test_versions(text: str, version: tuple[int, ...] | None) -> None:
    assert parse.version_tuple(text) == version


@pytest.mark.parametrize(("text", "when"), [
    ("2025-03-11 10:13:22", datetime(2025, 3, 11, 10, 13, 22)),  # 7.10+
    ("aug/12/2024 11:05:01", datetime(2024, 8, 12, 11, 5, 1)),  # before 7.10
    ("Aug/12/2024 11:05:01", datetime(2024, 8, 12, 11, 5, 1)),
    ("feb/30/2024 00:00:00", None),
    ("yesterday", None),
])
def test_both_date_formats(text: str, when: datetime | None) -> None:
    assert parse.router_datetime(text) == when


def test_policies_and_what_is_missing() -> None:
    enabled = parse.enabled_policies("local,read,api,!write,!test,!policy")
    assert enabled == {"local", "read", "api"}
    assert parse.missing_policies(enabled) == ("write", "test")
    assert parse.missing_policies({"api", "read", "write", "test"}) == ()


def test_identity_changes_are_sentences() -> None:
    a = RouterIdentity("HD9080A1B2C", "RB2011UiAS", "office", "7.18.2 (stable)")
    b = RouterIdentity("HE1234567", "RB2011UiAS", "MikroTik", "7.18.2 (stable)")
    said = parse.identity_changes(a, b)
    assert said[0].startswith("The router's serial number changed from HD9080A1B2C to HE1234567")
    assert "'office' to 'MikroTik'" in said[1]
    assert parse.identity_changes(a, a) == []
    upgraded = RouterIdentity("HD9080A1B2C", "RB2011UiAS", "office", "7.19 (stable)")
    assert parse.identity_changes(a, upgraded) == [
        "The router's RouterOS changed from 7.18.2 (stable) to 7.19 (stable)."]


@pytest.mark.parametrize(("row", "on"), [
    ({".id": "*5", "name": "sip", "disabled": "false"}, True),
    ({".id": "*5", "name": "sip", "disabled": "no"}, True),
    ({".id": "*5", "name": "sip", "disabled": "true"}, False),
    ({".id": "*5", "name": "sip", "disabled": "yes"}, False),
    ({".id": "*5", "name": "sip"}, None),  # disabled not printed: cannot tell
    ({".id": "*5", "name": "sip", "disabled": "maybe"}, None),
    (None, None),  # no service-port row `sip` on this build
])
def test_sip_helper_on(row: dict[str, str] | None, on: bool | None) -> None:
    assert parse.sip_helper_on(row) is on


@pytest.mark.parametrize(("protocol", "dst", "kind"), [
    ("udp", "203.0.113.10:5060", "sip"),
    ("tcp", "203.0.113.10:5061", "sip"),
    ("udp", "203.0.113.10:10002", "rtp"),
    ("tcp", "203.0.113.10:10002", None),
    ("udp", "203.0.113.10:9999", None),
    ("udp", "203.0.113.11:5060", None),
    ("icmp", "203.0.113.10", None),
    ("udp", "", None),
])
def test_voip_flow_kind(protocol: str, dst: str, kind: str | None) -> None:
    assert parse.voip_flow_kind(POLICY, NETS, protocol, dst) == kind


def test_active_calls_by_rate_or_fresh_timeout() -> None:
    rows = [
        {"protocol": "udp", "src-address": "192.168.88.10:40002",
         "dst-address": "203.0.113.10:10002", "orig-rate": "87000", "timeout": "2m"},
        {"protocol": "udp", "src-address": "192.168.88.10:40003",
         "dst-address": "203.0.113.10:10003", "orig-rate": "0", "timeout": "2m59s",
         "assured": "true"},  # its RTCP: the same call
        {"protocol": "udp", "src-address": "192.168.88.11:40004",
         "dst-address": "203.0.113.10:10004", "orig-rate": "0", "repl-rate": "0",
         "timeout": "2m59s", "assured": "true"},  # a packet just now
        {"protocol": "udp", "src-address": "192.168.88.12:40006",
         "dst-address": "203.0.113.10:10006", "timeout": "1m", "assured": "true"},  # quiet
        {"protocol": "udp", "src-address": "192.168.88.10:5060",
         "dst-address": "203.0.113.10:5060", "orig-rate": "8000"},  # SIP is not a call
    ]
    assert parse.active_calls(POLICY, NETS, rows) == 2


def test_ping_rows_v7_and_v6() -> None:
    rows = [
        {"seq": "0", "host": "203.0.113.10", "time": "12ms345us", "sent": "1", "received": "1"},
        {"seq": "1", "host": "203.0.113.10", "status": "timeout", "sent": "2", "received": "1"},
        {"seq": "2", "host": "203.0.113.10", "time": "13ms", "sent": "3", "received": "2"},
        {"sent": "3", "received": "2", "packet-loss": "33"},  # a summary row: no seq
    ]
    results = parse.ping_results("203.0.113.10", rows, "cellular")
    assert [(r.answered, r.rtt_s, r.detail) for r in results] == [
        (True, pytest.approx(0.012345), None), (False, None, "timeout"),
        (True, pytest.approx(0.013), None)]
    assert results[0].method == "icmp" and results[0].extra["via"] == "cellular"
    assert parse.format_interval(0.2) == "200ms" and parse.format_interval(0.001) == "10ms"


def test_carrier_and_resync() -> None:
    assert parse.carrier_up({"running": "true", "disabled": "false"})
    assert not parse.carrier_up({"running": "true", "disabled": "true"})
    assert not parse.carrier_up({})
    events = parse.carrier_resync({"ether1": True, "ether10": True, "lte1": True},
                                  {"ether1": True, "ether10": False})
    assert events == [LinkEvent("ether10", False), LinkEvent("lte1", False)]


def test_endpoints() -> None:
    assert parse.endpoint("10.5.101.1:8291") == ("10.5.101.1", 8291)
    assert parse.endpoint("10.5.101.1") == ("10.5.101.1", None)
    assert parse.endpoint(None) is None


def test_carrier_change_from_listen_items() -> None:
    known = {"ether10": True}
    names = {"*A": "ether10"}
    assert parse.carrier_change(known, names, {".id": "*A", "name": "ether10",
                                               "running": "false"}) == [
        LinkEvent("ether10", False)]
    assert parse.carrier_change(known, names, {".id": "*A", "running": "false"}) == []
    assert parse.carrier_change(known, names, {".id": "*A", "comment": "x"}) == []
    # a new interface shows up down, then comes up
    assert parse.carrier_change(known, names, {".id": "*C", "name": "lte1",
                                               "running": "false"}) == []
    assert parse.carrier_change(known, names, {".id": "*C", "running": "true"}) == [
        LinkEvent("lte1", True)]
    # unplugged: the item is dead, and it had carrier
    assert parse.carrier_change(known, names, {".id": "*C", ".dead": "true"}) == [
        LinkEvent("lte1", False)]
    assert "lte1" not in known and "*C" not in names
