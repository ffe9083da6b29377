"""Small network checks run inside a lab namespace: ICMP echo, SIP OPTIONS, HTTP, raw UDP.

Run as `ip netns exec NS python -m hil.lab.probe ...`; each prints one JSON object and
exits 0 when the check got an answer, 1 when it did not. The lab does not need
iputils or curl: the checks are the standard library (ICMP uses a raw socket: root).

    python -m hil.lab.probe ping 203.0.113.10 [--count N] [--timeout S]
    python -m hil.lab.probe sip-options 203.0.113.10 [--port 5060] [--timeout S]
    python -m hil.lab.probe http http://203.0.113.80/ [--timeout S]
    python -m hil.lab.probe udp 203.0.113.10 5060 [--source ADDR] [--device IF] < datagram
                                                       # prints the first reply and its sender
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import socket
import struct
import sys
import time
import urllib.request

ICMP_ECHO_REQUEST = 8
ICMP_ECHO_REPLY = 0


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def ping(address: str, count: int = 1, timeout_s: float = 1.0, interval_s: float = 0.1) -> dict:
    """ICMP echo: each request waits up to `timeout_s` for its own reply."""
    ident = (os.getpid() ^ secrets.randbits(16)) & 0xFFFF
    rtts_ms: list[float] = []
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP) as sock:
        for seq in range(count):
            if seq:
                time.sleep(interval_s)
            header = struct.pack("!BBHHH", ICMP_ECHO_REQUEST, 0, 0, ident, seq)
            payload = b"cpe-lab-probe".ljust(32, b".")
            packet = struct.pack(
                "!BBHHH", ICMP_ECHO_REQUEST, 0, _checksum(header + payload), ident, seq
            ) + payload
            sent = time.monotonic()
            try:
                sock.sendto(packet, (address, 0))
            except OSError:
                continue
            deadline = sent + timeout_s
            while (left := deadline - time.monotonic()) > 0:
                sock.settimeout(left)
                try:
                    data, (source, _) = sock.recvfrom(2048)
                except (TimeoutError, OSError):
                    break
                ihl = (data[0] & 0x0F) * 4
                kind, _code, _sum, r_ident, r_seq = struct.unpack("!BBHHH", data[ihl : ihl + 8])
                if (kind, r_ident, r_seq, source) == (ICMP_ECHO_REPLY, ident, seq, address):
                    rtts_ms.append((time.monotonic() - sent) * 1000)
                    break
    return {"address": address, "sent": count, "received": len(rtts_ms), "rtts_ms": rtts_ms}


def sip_options_request(address: str, port: int, local_address: str, local_port: int) -> str:
    """An RFC 3261 OPTIONS request with fresh branch, tag and Call-ID."""
    branch = "z9hG4bK" + secrets.token_hex(8)
    return (
        f"OPTIONS sip:{address}:{port} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {local_address}:{local_port};rport;branch={branch}\r\n"
        "Max-Forwards: 70\r\n"
        f"To: <sip:{address}:{port}>\r\n"
        f"From: <sip:cpe-lab-probe@{local_address}>;tag={secrets.token_hex(4)}\r\n"
        f"Call-ID: {secrets.token_hex(12)}@cpe-lab\r\n"
        "CSeq: 1 OPTIONS\r\n"
        f"Contact: <sip:cpe-lab-probe@{local_address}:{local_port}>\r\n"
        "Accept: application/sdp\r\n"
        "Content-Length: 0\r\n"
        "\r\n"
    )


def parse_sip_response(text: str) -> dict:
    """Status line and headers of a SIP response (header names lower-cased)."""
    head = text.split("\r\n\r\n", 1)[0]
    lines = head.split("\r\n")
    version, status, reason = [*lines[0].split(" ", 2), "", ""][:3]
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers.setdefault(name.strip().lower(), value.strip())
    return {"version": version, "status": int(status) if status.isdigit() else None,
            "reason": reason, "headers": headers}


def udp_exchange(
    address: str,
    port: int,
    payload: bytes,
    timeout_s: float = 1.0,
    *,
    source: str | None = None,
    device: str | None = None,
) -> tuple[bytes, str] | None:
    """One datagram and the first reply with its sender ("addr:port"); None if none.

    `source` and `device` bind the socket to one link, as the agent's probes are bound
    (SO_BINDTODEVICE and the link's address, which selects its routing table)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout_s)
        if device:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, device.encode() + b"\0")
        if source:
            sock.bind((source, 0))
        sock.connect((address, port))
        sock.send(payload)
        try:
            data, sender = sock.recvfrom(65535)
        except (TimeoutError, OSError):
            return None
        return data, f"{sender[0]}:{sender[1]}"


def sip_options(address: str, port: int = 5060, timeout_s: float = 1.0) -> dict:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout_s)
        sock.connect((address, port))
        local_address, local_port = sock.getsockname()
        request = sip_options_request(address, port, local_address, local_port)
        call_id = request.split("Call-ID: ", 1)[1].split("\r\n", 1)[0]
        sock.send(request.encode())
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            try:
                reply = sock.recv(65535).decode(errors="replace")
            except (TimeoutError, OSError):
                break
            parsed = parse_sip_response(reply)
            if parsed["headers"].get("call-id") == call_id and (parsed["status"] or 0) >= 200:
                return {"address": address, "answered": True, **parsed}
    return {"address": address, "answered": False}


def http_get(url: str, timeout_s: float = 2.0) -> dict:
    # No proxies, ever: the environment's proxy settings must not apply inside the lab.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout_s) as response:
            body = response.read()
            return {"url": url, "status": response.status, "bytes": len(body)}
    except OSError as exc:
        return {"url": url, "status": None, "error": str(exc)}


def modem_control(op: str, port: int, args: dict, timeout_s: float = 5.0) -> dict:
    """One request on the simulated modem's side channel (JSON lines over TCP loopback)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as conn:
        conn.sendall(json.dumps({"op": op, "args": args}).encode() + b"\n")
        reply = conn.makefile("rb").readline()
    return dict(json.loads(reply))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hil.lab.probe", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("ping")
    p.add_argument("address")
    p.add_argument("--count", type=int, default=1)
    p.add_argument("--timeout", type=float, default=1.0)
    s = sub.add_parser("sip-options")
    s.add_argument("address")
    s.add_argument("--port", type=int, default=5060)
    s.add_argument("--timeout", type=float, default=1.0)
    h = sub.add_parser("http")
    h.add_argument("url")
    h.add_argument("--timeout", type=float, default=2.0)
    u = sub.add_parser("udp")
    u.add_argument("address")
    u.add_argument("port", type=int)
    u.add_argument("--timeout", type=float, default=1.0)
    u.add_argument("--source", help="bind to this local address")
    u.add_argument("--device", help="bind to this interface (SO_BINDTODEVICE)")
    m = sub.add_parser("modem")
    m.add_argument("op")
    m.add_argument("--port", type=int, required=True)
    m.add_argument("--args", default="{}", help="the operation's arguments, as JSON")
    args = parser.parse_args(argv)

    if args.command == "modem":
        result = modem_control(args.op, args.port, json.loads(args.args))
        ok = bool(result.get("ok"))
    elif args.command == "ping":
        result = ping(args.address, args.count, args.timeout)
        ok = result["received"] > 0
    elif args.command == "sip-options":
        result = sip_options(args.address, args.port, args.timeout)
        ok = result["answered"]
    elif args.command == "http":
        result = http_get(args.url, args.timeout)
        ok = result["status"] is not None
    else:
        answer = udp_exchange(args.address, args.port, sys.stdin.buffer.read(), args.timeout,
                              source=args.source, device=args.device)
        result = {"reply": None, "from": None}
        if answer is not None:
            result = {"reply": answer[0].decode(errors="replace"), "from": answer[1]}
        ok = answer is not None
    print(json.dumps(result))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
