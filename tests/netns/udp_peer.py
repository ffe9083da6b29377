"""A tiny UDP peer for the netns tests, run inside a namespace with `ip netns exec`.

    serve ADDR,... PORT...   echo every datagram back; print one JSON line per datagram
                             ({"src": ..., "sport": ..., "dport": ...})
    send DST PORT [options]  send datagrams (optionally from a fixed source port, with a
                             TOS byte, for a duration) and exit

Both stop by a deadline of their own, so a failing test never leaves one running.
"""

from __future__ import annotations

import argparse
import json
import selectors
import socket
import sys
import time


def serve(addresses: list[str], ports: list[int], deadline_s: float) -> None:
    """One socket per address and port, so each echo leaves from the address the datagram
    was sent to and conntrack sees it as the reply (not as a new flow)."""
    selector = selectors.DefaultSelector()
    for address in addresses:
        for port in ports:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind((address, port))
            selector.register(sock, selectors.EVENT_READ, port)
    print(json.dumps({"ready": ports}), flush=True)
    end = time.monotonic() + deadline_s
    while (left := end - time.monotonic()) > 0:
        for key, _ in selector.select(timeout=left):
            sock = key.fileobj
            data, (src, sport) = sock.recvfrom(65535)  # type: ignore[union-attr]
            print(json.dumps({"src": src, "sport": sport, "dport": key.data}), flush=True)
            sock.sendto(data, (src, sport))  # type: ignore[union-attr]


def send(args: argparse.Namespace) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    if args.tos:
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, args.tos)
    if args.sport:
        sock.bind(("0.0.0.0", args.sport))
    payload = b"x" * args.size
    end = time.monotonic() + args.duration_s
    sent = 0
    while sent < args.count or time.monotonic() < end:
        sock.sendto(payload, (args.dst, args.port))
        sent += 1
        if args.interval_s:
            time.sleep(args.interval_s)
    print(json.dumps({"sent": sent, "sport": sock.getsockname()[1]}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    commands = parser.add_subparsers(dest="command", required=True)
    serve_parser = commands.add_parser("serve")
    serve_parser.add_argument("addresses", type=lambda text: text.split(","))
    serve_parser.add_argument("ports", type=int, nargs="+")
    serve_parser.add_argument("--deadline-s", type=float, default=60.0)
    send_parser = commands.add_parser("send")
    send_parser.add_argument("dst")
    send_parser.add_argument("port", type=int)
    send_parser.add_argument("--sport", type=int, default=0)
    send_parser.add_argument("--tos", type=lambda text: int(text, 0), default=0)
    send_parser.add_argument("--size", type=int, default=32)
    send_parser.add_argument("--count", type=int, default=1)
    send_parser.add_argument("--duration-s", type=float, default=0.0)
    send_parser.add_argument("--interval-s", type=float, default=0.0)
    args = parser.parse_args()
    if args.command == "serve":
        serve(args.addresses, args.ports, args.deadline_s)
    else:
        send(args)


if __name__ == "__main__":
    sys.exit(main())
