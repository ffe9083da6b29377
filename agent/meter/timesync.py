"""What the OS knows about its clock and its boot (Linux); None where it cannot tell.

- `kernel_clock_synchronized`: adjtimex(2) in read-only mode (modes = 0, no privilege
  needed). The kernel returns TIME_ERROR (5) while STA_UNSYNC is set, which every NTP
  client (chrony, ntpd, systemd-timesyncd, busybox ntpd) clears once it has set the
  clock. Not a reading of the time: a reading of whether to believe it.
- `host_boot_id`: changes at every boot; CLOCK_MONOTONIC is comparable only within one.

These belong with agent/clock.py (time quality); they live here until it grows them.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from pathlib import Path

BOOT_ID_PATH = Path("/proc/sys/kernel/random/boot_id")
TIME_ERROR = 5
#: struct timex is 208 bytes on 64-bit Linux; a larger buffer costs nothing.
TIMEX_BUFFER_BYTES = 512


def kernel_clock_synchronized() -> bool | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        buffer = ctypes.create_string_buffer(TIMEX_BUFFER_BYTES)  # modes = 0: read only
        state = int(libc.adjtimex(buffer))
    except (OSError, AttributeError):
        return None
    if state < 0:
        return None
    return state != TIME_ERROR


def host_boot_id() -> str | None:
    try:
        return BOOT_ID_PATH.read_text().strip() or None
    except OSError:
        return None
