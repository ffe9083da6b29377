"""systemd readiness and watchdog notifications (sd_notify), without a dependency.

The protocol is one datagram to the socket named by $NOTIFY_SOCKET; when the agent is
not run by systemd the variable is absent and every call is a no-op. The watchdog ping
comes from the asyncio loop itself, so a wedged loop stops pinging and systemd restarts
the agent (`WatchdogSec=` in packaging/cpe-agent.service).
"""

from __future__ import annotations

import os
import socket


def notify(message: str) -> bool:
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # abstract namespace socket
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(message.encode(), address)
    except OSError:
        return False
    return True
