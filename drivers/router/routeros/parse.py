"""Pure parsers for what a RouterOS router says over the API.

Normalised at the boundary: seconds, bytes, booleans and None for unknown. No I/O, no
clock, no logging; every function is tested from literal replies.

The driver reads words raw (strings), not through librouteros' value conversion, which
turns "yes"/"true" into True and integer-looking words into ints: a comment "007" or an
interface named "1" would not survive it.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from drivers.types import LinkEvent, ProbeResult, RouterIdentity, VoipPolicy

MONTHS = {m: i for i, m in enumerate(
    ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"), 1)}

#: What the agent's session needs: `api` to log in, `read` to print, `write` to add, set
#: and remove its items, `test` for /ping. Nothing else (no policy, sensitive, reboot).
REQUIRED_POLICIES = ("api", "read", "write", "test")


# --- replies ------------------------------------------------------------------------


@dataclass
class Reply:
    """One command's reply: its `!re` rows, the `=ret=` of `!done`, and any `!trap`s."""

    rows: list[dict[str, str]] = field(default_factory=list)
    ret: str | None = None
    traps: list[tuple[str, str | None]] = field(default_factory=list)
    #: Reply words not understood (kept for the bug report, never raised on).
    unknown: list[str] = field(default_factory=list)


def attributes(words: Iterable[str]) -> dict[str, str]:
    """`=name=value` words as a dict of strings; `.tag=` and API flags are left out.

    A value may itself hold "=" (a comment "a=b"): only the first two split.
    """
    out: dict[str, str] = {}
    for word in words:
        if word.startswith("="):
            name, _, value = word[1:].partition("=")
            out[name] = value
    return out


def tag_of(words: Iterable[str]) -> str | None:
    for word in words:
        if word.startswith(".tag="):
            return word[5:]
    return None


def reply(sentences: Iterable[tuple[str, Sequence[str]]]) -> Reply:
    """Fold the sentences of one command (up to and including `!done`) into a Reply.

    `!empty` (7.18+, for a print that found nothing) carries nothing and is skipped.
    """
    out = Reply()
    for word, words in sentences:
        attrs = attributes(words)
        if word == "!re":
            out.rows.append(attrs)
        elif word == "!done":
            out.ret = attrs.get("ret")
        elif word == "!trap":
            out.traps.append((attrs.get("message", ""), attrs.get("category")))
        elif word != "!empty":
            out.unknown.append(word)
    return out


def trap_text(traps: Sequence[tuple[str, str | None]]) -> str:
    return ", ".join(message for message, _ in traps)


# --- values -------------------------------------------------------------------------


def to_bool(value: str | None) -> bool | None:
    if value is None:
        return None
    low = value.strip().lower()
    if low in ("true", "yes"):
        return True
    if low in ("false", "no"):
        return False
    return None


def sip_helper_on(row: Mapping[str, str] | None) -> bool | None:
    """Whether the SIP helper (`/ip firewall service-port` row `sip`) is on.

    None when the router has no such row (some builds lack it) or its `disabled` cannot
    be read: "cannot tell" is not "off", so an installer's check does not pass on a guess.
    """
    if row is None:
        return None
    disabled = to_bool(row.get("disabled"))
    return None if disabled is None else not disabled


def to_int(value: str | None) -> int | None:
    if value is None or not value.strip():
        return None
    try:
        return int(value)
    except ValueError:
        return None


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|us|ns|w|d|h|m|s)")
_CLOCK = re.compile(r"(?:(\d+)d)?\s*(\d+):(\d{2}):(\d{2})(?:\.(\d+))?")
_SCALE = {"w": 604800.0, "d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3,
          "us": 1e-6, "ns": 1e-9}


def duration_s(text: str | None) -> float | None:
    """RouterOS durations in seconds: `1w2d3h4m5s`, `12ms345us`, `00:05:00`, `1d02:03:04`,
    or a bare number of seconds. None for anything else."""
    if text is None:
        return None
    text = text.strip()
    if not text:
        return None
    m = _CLOCK.fullmatch(text)
    if m:
        days, hours, minutes, seconds, fraction = m.groups()
        total: float = int(days or 0) * 86400 + int(hours) * 3600 + int(minutes) * 60 + int(seconds)
        return total + (float(f"0.{fraction}") if fraction else 0.0)
    try:
        return float(text)
    except ValueError:
        pass
    total = 0.0
    pos = 0
    for part in _DURATION_PART.finditer(text):
        if part.start() != pos:
            return None
        total += float(part.group(1)) * _SCALE[part.group(2)]
        pos = part.end()
    return total if pos == len(text) else None


def version_tuple(text: str | None) -> tuple[int, ...] | None:
    """`7.18.2 (stable)` -> (7, 18, 2); `6.49.17 (long-term)` -> (6, 49, 17); `7.19rc2` ->
    (7, 19)."""
    if not text:
        return None
    m = re.match(r"\s*(\d+(?:\.\d+)*)", text)
    if not m:
        return None
    return tuple(int(p) for p in m.group(1).split("."))


def router_datetime(text: str | None) -> datetime | None:
    """A RouterOS date-time in either format: 7.10+ `2025-03-11 10:13:22`, before that
    `mar/11/2025 10:13:22` (month name in any case). None when it is neither."""
    if not text:
        return None
    text = text.strip()
    try:
        return datetime.strptime(text, "%Y-%m-%d %H:%M:%S")
    except ValueError:
        pass
    m = re.fullmatch(r"([A-Za-z]{3})/(\d{1,2})/(\d{4})\s+(\d{1,2}):(\d{2}):(\d{2})", text)
    if not m or m.group(1).lower() not in MONTHS:
        return None
    month = MONTHS[m.group(1).lower()]
    try:
        return datetime(int(m.group(3)), month, int(m.group(2)), int(m.group(4)),
                        int(m.group(5)), int(m.group(6)))
    except ValueError:
        return None


# --- identity and privileges ---------------------------------------------------------


def identity(resource: Mapping[str, str], routerboard: Mapping[str, str] | None,
             system_identity: Mapping[str, str] | None) -> RouterIdentity:
    board = routerboard or {}
    return RouterIdentity(
        serial=board.get("serial-number") or None,
        model=board.get("model") or resource.get("board-name") or None,
        name=(system_identity or {}).get("name"),
        os_version=resource.get("version") or None,
    )


def identity_changes(before: RouterIdentity, after: RouterIdentity) -> list[str]:
    """Sentences for a router that is not the one it was: swapped, reset or renamed."""
    out = []
    if before.serial and after.serial and before.serial != after.serial:
        out.append(
            f"The router's serial number changed from {before.serial} to {after.serial}: it "
            "was swapped; check that the swap was authorised."
        )
    if before.name is not None and after.name is not None and before.name != after.name:
        out.append(
            f"The router's identity changed from {before.name!r} to {after.name!r} (a factory "
            "reset restores 'MikroTik'); check who changed it."
        )
    if (before.os_version and after.os_version and before.os_version != after.os_version
            and before.serial == after.serial):
        out.append(f"The router's RouterOS changed from {before.os_version} to "
                   f"{after.os_version}.")
    return out


def enabled_policies(policy: str | None) -> set[str]:
    """A group's policy string (`read,write,!ftp,...`) -> the enabled policies."""
    return {p.strip() for p in (policy or "").split(",") if p.strip() and not p.startswith("!")}


def missing_policies(enabled: set[str], required: Sequence[str] = REQUIRED_POLICIES
                     ) -> tuple[str, ...]:
    return tuple(p for p in required if p not in enabled)


# --- connection tracking -------------------------------------------------------------


def endpoint(text: str | None) -> tuple[str, int | None] | None:
    """A conntrack address `10.5.101.1:8291` (or without a port) -> (ip, port)."""
    if not text:
        return None
    host, sep, port = text.rpartition(":")
    if sep and port.isdigit() and host.count(":") == 0:
        return host, int(port)
    return text, None


def voip_flow_kind(policy: VoipPolicy, networks: Sequence[ipaddress.IPv4Network],
                   protocol: str | None, dst: str | None) -> str | None:
    """"sip" or "rtp" for a flow to the VoIP prefixes that the marking rules steer, else None."""
    parsed = endpoint(dst)
    if parsed is None or parsed[1] is None:
        return None
    host, port = parsed
    if port is None:
        return None
    try:
        address = ipaddress.IPv4Address(host)
    except ValueError:
        return None
    if not any(address in n for n in networks):
        return None
    if protocol in ("udp", "tcp") and port in policy.sip_ports:
        return "sip"
    if protocol == "udp" and policy.rtp_port_min <= port <= policy.rtp_port_max:
        return "rtp"
    return None


#: RouterOS' default udp-stream-timeout (/ip firewall connection tracking): 3 minutes.
UDP_STREAM_TIMEOUT_S = 180.0
#: An RTP entry whose timeout is within this of the stream timeout saw a packet just now.
RECENT_S = 5.0


def rtp_is_active(row: Mapping[str, str], stream_timeout_s: float = UDP_STREAM_TIMEOUT_S
                  ) -> bool:
    """Whether an RTP entry carried packets in the last few seconds.

    The router's own rate estimate (`orig-rate`/`repl-rate`, bits per second) says so
    directly; failing that, every packet of an assured UDP flow resets its timeout to the
    stream timeout, so a timeout within RECENT_S of it means a packet just now.
    """
    rates = [to_int(row.get("orig-rate")), to_int(row.get("repl-rate"))]
    if any(r for r in rates if r is not None):
        return True
    if to_bool(row.get("assured")) is False:
        return False
    left = duration_s(row.get("timeout"))
    return left is not None and left >= stream_timeout_s - RECENT_S


def active_calls(policy: VoipPolicy, networks: Sequence[ipaddress.IPv4Network],
                 rows: Iterable[Mapping[str, str]]) -> int:
    """RTP flows to the VoIP prefixes with recent packets; RTP and RTCP (port + 1) count once."""
    calls = set()
    for row in rows:
        if voip_flow_kind(policy, networks, row.get("protocol"), row.get("dst-address")) != "rtp":
            continue
        if not rtp_is_active(row):
            continue
        dst = endpoint(row.get("dst-address"))
        src = endpoint(row.get("src-address"))
        if dst is None or dst[1] is None:
            continue
        calls.add((src[0] if src else "", dst[0], dst[1] // 2))
    return len(calls)


# --- ping ---------------------------------------------------------------------------


def ping_results(target: str, rows: Iterable[Mapping[str, str]], via: str) -> list[ProbeResult]:
    """One ProbeResult per probe (`seq`), from /ping's rows; the last row of a seq wins."""
    by_seq: dict[int, Mapping[str, str]] = {}
    for row in rows:
        seq = to_int(row.get("seq"))
        if seq is not None:
            by_seq[seq] = row
    out = []
    for seq in sorted(by_seq):
        row = by_seq[seq]
        rtt_s = duration_s(row.get("time"))
        answered = rtt_s is not None and not row.get("status")
        out.append(ProbeResult(
            target=target,
            method="icmp",
            answered=answered,
            rtt_s=rtt_s if answered else None,
            detail=None if answered else (row.get("status") or "timeout"),
            extra={"via": via, "seq": str(seq), "by": "router"},
        ))
    return out


def format_interval(seconds: float) -> str:
    """RouterOS time for /ping's interval: whole milliseconds, `200ms`."""
    return f"{max(10, round(seconds * 1000))}ms"


# --- links --------------------------------------------------------------------------


def carrier_up(row: Mapping[str, str]) -> bool:
    return to_bool(row.get("running")) is True and to_bool(row.get("disabled")) is not True


def carrier_resync(known: Mapping[str, bool], current: Mapping[str, bool]) -> list[LinkEvent]:
    """Events for what changed between two views of the interfaces (after a reconnect)."""
    events = []
    for name, up in current.items():
        if known.get(name, up) != up:
            events.append(LinkEvent(name, up))
    for name, up in known.items():
        if name not in current and up:
            events.append(LinkEvent(name, False))
    return events


def carrier_change(known: dict[str, bool], names: dict[str, str],
                   attrs: Mapping[str, str]) -> list[LinkEvent]:
    """The event (if any) for one listen item; updates `known` and `names`.

    A removed interface (`.dead`) that had carrier is a carrier loss (a modem unplugged);
    a new interface is reported only when it comes up with carrier.
    """
    item_id = attrs.get(".id", "")
    if to_bool(attrs.get(".dead")):
        name = names.pop(item_id, None)
        if name is not None and known.pop(name, False):
            return [LinkEvent(name, False)]
        return []
    name = attrs.get("name") or names.get(item_id)
    if not name:
        return []
    names[item_id] = name
    if "running" not in attrs:
        return []
    up = carrier_up(attrs)
    before = known.get(name)
    known[name] = up
    if before is None and not up:
        return []
    return [LinkEvent(name, up)] if before != up else []


def counts_frames(interface_type: str | None) -> bool:
    """Whether an interface's byte counters include the Ethernet header.

    Assumed for RouterOS Ethernet ports (as on Linux, where RouterOS' counters come from),
    not yet measured on a rig; the built-in LTE and PPP interfaces count IP bytes.
    """
    return interface_type in ("ether", "vlan", "bridge", "wlan", "wifi", "veth")
