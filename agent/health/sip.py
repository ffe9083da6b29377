"""SIP OPTIONS for reachability probing: build the request, parse and match the reply.

Why OPTIONS: ISPs sometimes block or mangle SIP (port 5060, "SIP ALGs") while web
traffic flows, and a link that cannot carry SIP is down for voice even when ICMP
answers. An OPTIONS transaction to each SBC is the cheapest test of exactly the path
the phones use (RFC 3261 §11 allows it to any server, no dialog is created).

Privacy: the probe names no phone number and no account. The request URI and To are
`sip:ping@<sbc>`, From and Contact `sip:cpe-agent@<local address>`; the only
identifying item is the link's own address, which the SBC sees anyway.

Pure: no I/O, no clock, no randomness (the caller passes the branch, tag and Call-ID).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: RFC 3261 §8.1.1.7: a branch starting with this cookie is RFC 3261-compliant.
BRANCH_MAGIC = "z9hG4bK"
USER_AGENT = "cpe-agent"

_STATUS_LINE = re.compile(r"^SIP/2\.0[ \t]+(\d{3})(?:[ \t]+(.*))?$")
#: RFC 3261 §7.3.3 compact header forms, mapped to the long names we use.
_COMPACT = {
    "v": "via",
    "i": "call-id",
    "f": "from",
    "t": "to",
    "l": "content-length",
    "m": "contact",
    "c": "content-type",
}
_TOKEN = re.compile(r"^[A-Za-z0-9.!%*_+`'~-]+$")


class SipParseError(ValueError):
    """The datagram is not a SIP response we can read (garbage, a request, truncated)."""


@dataclass(frozen=True)
class SipResponse:
    status_code: int
    reason: str
    #: The branch of the topmost Via (ours, if the reply is to our request).
    via_branch: str | None
    call_id: str | None
    cseq_number: int | None
    cseq_method: str | None
    #: All header fields in order, names lower-cased and expanded from compact form.
    headers: tuple[tuple[str, str], ...] = ()

    @property
    def is_final(self) -> bool:
        """1xx are provisional: the transaction goes on until a final (>= 200) reply."""
        return self.status_code >= 200

    def header(self, name: str) -> str | None:
        """The first value of a header, by long or compact name, or None."""
        key = _COMPACT.get(name.lower(), name.lower())
        for n, v in self.headers:
            if n == key:
                return v
        return None


def new_branch(token: str) -> str:
    """A Via branch from a random token (the caller supplies the randomness)."""
    _check_token(token, "branch token")
    return BRANCH_MAGIC + token


def format_host(host: str) -> str:
    """A host as it appears in a SIP URI or Via: IPv6 literals in brackets."""
    if ":" in host and not host.startswith("["):
        return f"[{host}]"
    return host


def _hostport(host: str, port: int, default_port: int | None = 5060) -> str:
    h = format_host(host)
    return h if port == default_port else f"{h}:{port}"


def _check_token(value: str, what: str) -> None:
    if not value or not _TOKEN.match(value):
        raise ValueError(f"{what} must be a non-empty SIP token, got {value!r}")


def build_options(
    *,
    sbc_host: str,
    local_host: str,
    local_port: int,
    branch: str,
    call_id: str,
    from_tag: str,
    sbc_port: int = 5060,
    cseq: int = 1,
    transport: str = "UDP",
) -> bytes:
    """An RFC 3261 OPTIONS request, ready to send as one UDP datagram.

    `;rport` (RFC 3581) asks the SBC to answer to the address and port the request came
    from, so the reply finds us through a NAT on the way.
    """
    if not branch.startswith(BRANCH_MAGIC) or len(branch) <= len(BRANCH_MAGIC):
        raise ValueError(f"branch must start with {BRANCH_MAGIC!r} and carry a token")
    _check_token(branch, "branch")
    _check_token(from_tag, "from tag")
    if not call_id or any(ch.isspace() for ch in call_id):
        raise ValueError(f"Call-ID must be a non-empty word, got {call_id!r}")
    if not 1 <= cseq < 2**31:
        raise ValueError(f"CSeq must be in 1 .. 2**31-1, got {cseq}")
    target = f"sip:ping@{_hostport(sbc_host, sbc_port)}"
    local = _hostport(local_host, local_port, default_port=None)
    lines = [
        f"OPTIONS {target} SIP/2.0",
        f"Via: SIP/2.0/{transport.upper()} {local};branch={branch};rport",
        "Max-Forwards: 70",
        f"From: <sip:{USER_AGENT}@{format_host(local_host)}>;tag={from_tag}",
        f"To: <{target}>",
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} OPTIONS",
        f"Contact: <sip:{USER_AGENT}@{local}>",
        "Accept: application/sdp",
        f"User-Agent: {USER_AGENT}",
        "Content-Length: 0",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")


def _split_headers(head: str) -> list[tuple[str, str]]:
    """Header lines -> (name, value), unfolding continuation lines (RFC 3261 §7.3.1)."""
    fields: list[tuple[str, str]] = []
    for line in re.split(r"\r?\n", head):
        if not line:
            continue
        if line[0] in " \t":
            if not fields:
                raise SipParseError("continuation line before any header")
            name, value = fields[-1]
            fields[-1] = (name, f"{value} {line.strip()}")
            continue
        name, sep, value = line.partition(":")
        if not sep or not name.strip():
            raise SipParseError(f"malformed header line {line[:60]!r}")
        key = name.strip().lower()
        fields.append((_COMPACT.get(key, key), value.strip()))
    return fields


def _via_branch(via: str | None) -> str | None:
    if via is None:
        return None
    first = via.split(",", 1)[0]
    for param in first.split(";")[1:]:
        name, _, value = param.partition("=")
        if name.strip().lower() == "branch":
            return value.strip() or None
    return None


def _cseq(value: str | None) -> tuple[int | None, str | None]:
    if value is None:
        return None, None
    parts = value.split()
    if len(parts) != 2 or not parts[0].isdigit():
        raise SipParseError(f"malformed CSeq {value!r}")
    return int(parts[0]), parts[1].upper()


def parse_response(data: bytes) -> SipResponse:
    """A SIP response from one datagram; SipParseError for anything else."""
    text = data.decode("utf-8", errors="replace")
    match = re.search(r"\r?\n\r?\n", text)
    head = text[: match.start()] if match else text
    status_line, _, rest = head.partition("\n")
    m = _STATUS_LINE.match(status_line.rstrip("\r"))
    if m is None:
        raise SipParseError(f"not a SIP response: {status_line[:60]!r}")
    code = int(m.group(1))
    if not 100 <= code <= 699:
        raise SipParseError(f"status code {code} out of range")
    fields = _split_headers(rest)
    first: dict[str, str] = {}
    for name, value in fields:
        first.setdefault(name, value)
    number, method = _cseq(first.get("cseq"))
    return SipResponse(
        status_code=code,
        reason=(m.group(2) or "").strip(),
        via_branch=_via_branch(first.get("via")),
        call_id=first.get("call-id"),
        cseq_number=number,
        cseq_method=method,
        headers=tuple(fields),
    )


def response_matches(response: SipResponse, *, branch: str, call_id: str) -> bool:
    """Is this the reply to our OPTIONS? (RFC 3261 §17.1.3: top Via branch + CSeq method.)

    Call-ID is checked too: a SIP ALG that rewrites the branch or a stray reply to
    someone else's request must not count as the SBC answering us.
    """
    return (
        response.via_branch == branch
        and response.call_id == call_id
        and response.cseq_method == "OPTIONS"
    )


def counts_as_reachable(status_code: int) -> bool:
    """Does this final response show that SIP gets through the link to the SBC and back?

    Every final response does, 4xx/5xx included: the SBC read our request and its reply
    came back, which is all the link can be asked for. A 503 (overloaded, or a data centre
    in maintenance) is the provider's trouble, not the link's: the LTE link reaches the
    same SBCs, so failing over would cost plan bytes and drop calls for nothing. The
    verdict's reason sentence still says when every SBC answers 5xx.
    """
    return status_code >= 200
