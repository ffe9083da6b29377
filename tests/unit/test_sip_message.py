"""SIP OPTIONS: the request we send, the replies we accept, the garbage we refuse."""

from __future__ import annotations

import pytest

from agent.health.sip import (
    SipParseError,
    build_options,
    counts_as_reachable,
    format_host,
    new_branch,
    parse_response,
    response_matches,
)

BRANCH = "z9hG4bKabc123"
CALL_ID = "5f1e2d3c4b5a"
TAG = "t0a9"


def request(**overrides) -> str:
    args = {
        "sbc_host": "203.0.113.10",
        "local_host": "198.51.100.2",
        "local_port": 40123,
        "branch": BRANCH,
        "call_id": CALL_ID,
        "from_tag": TAG,
    }
    args.update(overrides)
    return build_options(**args).decode("ascii")


def test_options_request_is_rfc3261_complete():
    text = request()
    assert text.endswith("\r\n\r\n")
    lines = text.split("\r\n")
    assert lines[0] == "OPTIONS sip:ping@203.0.113.10 SIP/2.0"
    headers = dict(line.split(": ", 1) for line in lines[1:] if line)
    assert headers == {
        "Via": f"SIP/2.0/UDP 198.51.100.2:40123;branch={BRANCH};rport",
        "Max-Forwards": "70",
        "From": f"<sip:cpe-agent@198.51.100.2>;tag={TAG}",
        "To": "<sip:ping@203.0.113.10>",
        "Call-ID": CALL_ID,
        "CSeq": "1 OPTIONS",
        "Contact": "<sip:cpe-agent@198.51.100.2:40123>",
        "Accept": "application/sdp",
        "User-Agent": "cpe-agent",
        "Content-Length": "0",
    }


# (overrides, expected request line, expected To)
URI_TABLE = [
    (
        {"sbc_port": 5080},
        "OPTIONS sip:ping@203.0.113.10:5080 SIP/2.0",
        "<sip:ping@203.0.113.10:5080>",
    ),
    ({"sbc_host": "sbc1.voip.example"}, "OPTIONS sip:ping@sbc1.voip.example SIP/2.0", None),
    ({"sbc_host": "2001:db8::10"}, "OPTIONS sip:ping@[2001:db8::10] SIP/2.0", None),
]


@pytest.mark.parametrize(("overrides", "line", "to"), URI_TABLE)
def test_request_uri(overrides, line, to):
    text = request(**overrides)
    assert text.split("\r\n")[0] == line
    if to is not None:
        assert f"To: {to}\r\n" in text


def test_request_carries_no_user_identity():
    # Privacy: only the fixed probe names, never a phone number or account.
    text = request()
    users = {part.split("@")[0].split(":")[-1] for part in text.split("sip:")[1:]}
    assert users == {"ping", "cpe-agent"}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"branch": "abc123"}, "z9hG4bK"),
        ({"branch": "z9hG4bK"}, "z9hG4bK"),
        ({"branch": "z9hG4bK a"}, "token"),
        ({"from_tag": ""}, "from tag"),
        ({"call_id": "a b"}, "Call-ID"),
        ({"cseq": 0}, "CSeq"),
    ],
)
def test_bad_request_fields_are_refused(overrides, message):
    with pytest.raises(ValueError, match=message):
        request(**overrides)


def test_new_branch_and_host_format():
    assert new_branch("abc") == "z9hG4bKabc"
    with pytest.raises(ValueError):
        new_branch("")
    assert format_host("2001:db8::1") == "[2001:db8::1]"
    assert format_host("[2001:db8::1]") == "[2001:db8::1]"
    assert format_host("192.0.2.1") == "192.0.2.1"


def reply(status: str = "200 OK", *, via: str | None = None, extra: str = "") -> bytes:
    via = via or f"Via: SIP/2.0/UDP 198.51.100.2:40123;branch={BRANCH};rport=40123;received=1.2.3.4"
    return (
        f"SIP/2.0 {status}\r\n{via}\r\n"
        f"From: <sip:cpe-agent@198.51.100.2>;tag={TAG}\r\n"
        "To: <sip:ping@203.0.113.10>;tag=sbc9\r\n"
        f"Call-ID: {CALL_ID}\r\nCSeq: 1 OPTIONS\r\n{extra}Content-Length: 0\r\n\r\n"
    ).encode()


# (datagram, status, reason, branch, call_id, cseq)
PARSE_TABLE = [
    (reply(), 200, "OK", BRANCH, CALL_ID, (1, "OPTIONS")),
    (reply("404 Not Found"), 404, "Not Found", BRANCH, CALL_ID, (1, "OPTIONS")),
    (reply("503 Service Unavailable"), 503, "Service Unavailable", BRANCH, CALL_ID, (1, "OPTIONS")),
    (reply("100 Trying"), 100, "Trying", BRANCH, CALL_ID, (1, "OPTIONS")),
    (reply("200"), 200, "", BRANCH, CALL_ID, (1, "OPTIONS")),
    # Compact forms (RFC 3261 §7.3.3), lower-case names, bare LF line ends.
    (
        f"SIP/2.0 200 OK\nv: SIP/2.0/UDP 10.0.0.1:5060;BRANCH={BRANCH}\ni: {CALL_ID}\n"
        "cseq: 7 options\n\n".encode(),
        200,
        "OK",
        BRANCH,
        CALL_ID,
        (7, "OPTIONS"),
    ),
    # Two Vias in one header line: the topmost (first) is ours.
    (
        reply(via=f"Via: SIP/2.0/UDP a:1;branch={BRANCH}, SIP/2.0/UDP b:2;branch=z9hG4bKother"),
        200,
        "OK",
        BRANCH,
        CALL_ID,
        (1, "OPTIONS"),
    ),
    # A folded header line (RFC 3261 §7.3.1).
    (
        reply(via=f"Via: SIP/2.0/UDP 198.51.100.2:40123\r\n ;branch={BRANCH}"),
        200,
        "OK",
        BRANCH,
        CALL_ID,
        (1, "OPTIONS"),
    ),
    # No Via at all: parsed, but it will never match.
    (b"SIP/2.0 200 OK\r\nCall-ID: x\r\n\r\n", 200, "OK", None, "x", (None, None)),
]


@pytest.mark.parametrize(("data", "status", "reason", "branch", "call_id", "cseq"), PARSE_TABLE)
def test_parse_response(data, status, reason, branch, call_id, cseq):
    response = parse_response(data)
    assert response.status_code == status
    assert response.reason == reason
    assert response.via_branch == branch
    assert response.call_id == call_id
    assert (response.cseq_number, response.cseq_method) == cseq
    assert response.is_final is (status >= 200)


def test_header_lookup_by_long_or_compact_name():
    response = parse_response(reply(extra="Allow: INVITE, OPTIONS\r\n"))
    assert response.header("allow") == "INVITE, OPTIONS"
    assert response.header("i") == CALL_ID
    assert response.header("Call-ID") == CALL_ID
    assert response.header("x-missing") is None


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x00\xff\x10garbage",
        b"OPTIONS sip:cpe-agent@198.51.100.2 SIP/2.0\r\nVia: x\r\n\r\n",  # a request
        b"SIP/2.0 99 Too Low\r\n\r\n",
        b"SIP/2.0 700 Too High\r\n\r\n",
        b"SIP/1.0 200 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n\r\n",
        b"SIP/2.0 200 OK\r\nno colon here\r\n\r\n",
        b"SIP/2.0 200 OK\r\n continuation first\r\n\r\n",
        b"SIP/2.0 200 OK\r\nCSeq: OPTIONS\r\n\r\n",
    ],
)
def test_garbage_is_a_parse_error(data):
    with pytest.raises(SipParseError):
        parse_response(data)


# (datagram, matches our transaction?)
MATCH_TABLE = [
    (reply(), True),
    (reply("503 Service Unavailable"), True),
    (reply(via="Via: SIP/2.0/UDP 198.51.100.2:40123;branch=z9hG4bKrewritten"), False),
    (reply().replace(CALL_ID.encode(), b"someone-else"), False),
    (reply().replace(b"CSeq: 1 OPTIONS", b"CSeq: 1 INVITE"), False),
]


@pytest.mark.parametrize(("data", "expected"), MATCH_TABLE)
def test_response_matches(data, expected):
    assert response_matches(parse_response(data), branch=BRANCH, call_id=CALL_ID) is expected


@pytest.mark.parametrize(
    ("status", "reachable"),
    [(200, True), (404, True), (408, True), (483, True), (503, True), (603, True), (180, False)],
)
def test_which_replies_prove_the_path(status, reachable):
    assert counts_as_reachable(status) is reachable


def test_request_round_trips_through_a_responder():
    """A reply built from our request's own headers (as an SBC does) matches it."""
    text = request()
    headers = dict(line.split(": ", 1) for line in text.split("\r\n")[1:] if line)
    answer = (
        f"SIP/2.0 200 OK\r\nVia: {headers['Via']}\r\nFrom: {headers['From']}\r\n"
        f"To: {headers['To']};tag=x\r\nCall-ID: {headers['Call-ID']}\r\n"
        f"CSeq: {headers['CSeq']}\r\nContent-Length: 0\r\n\r\n"
    ).encode()
    assert response_matches(parse_response(answer), branch=BRANCH, call_id=CALL_ID)
