"""Network time from the LTE modem when NTP is not there (a box without an RTC battery).

After a power cut a small box may boot in 1970 or at its last saved time, and NTP over a
dead primary link never answers; the plan cycle, the outbox and TLS all need the date.
The modem knows it: the network sends NITZ at registration (Quectel +QLTS), and with
+CTZU=1 the modem's clock (+CCLK) follows it.

`judge` (pure) decides what to do with one reading; `NetworkTimeSource` keeps the best
estimate (modem time plus the monotonic time since it was read) and, when allowed, steps
the system clock once. Reading the clock goes through the injected `Clock`; setting it
and asking the kernel whether NTP has synchronised it are the two small helpers at the
end, injected so tests need neither root nor a real clock.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import enum
import logging
from collections.abc import Callable
from dataclasses import dataclass

from agent.clock import Clock
from drivers.types import ModemTime

log = logging.getLogger(__name__)

#: A modem clock before this (2024-01-01) was never set by the network (Quectel boots at
#: 1980-01-06, others at 1970 or their build date).
MIN_PLAUSIBLE_UTC_S = 1_704_067_200.0


class TimeQuality(enum.StrEnum):
    NTP = "ntp"
    NETWORK = "network"
    UNSYNCHRONISED = "unsynchronised"


class Verdict(enum.StrEnum):
    IGNORE_NTP_OK = "ignore_ntp_ok"  # NTP has the clock: leave it alone
    IGNORE_IMPLAUSIBLE = "ignore_implausible"  # the modem's clock was never set
    KEEP = "keep"  # the system clock agrees within tolerance
    STEP = "step"  # the system clock is off: step it to the network time


@dataclass(frozen=True)
class Judgement:
    verdict: Verdict
    offset_s: float  # network time minus system time


def judge(
    reading: ModemTime,
    system_wall_s: float,
    ntp_synced: bool,
    *,
    tolerance_s: float = 120.0,
) -> Judgement:
    """Pure: what to do with one modem time reading, taken at `system_wall_s`."""
    offset = reading.utc_s - system_wall_s
    if ntp_synced:
        return Judgement(Verdict.IGNORE_NTP_OK, offset)
    if reading.utc_s < MIN_PLAUSIBLE_UTC_S:
        return Judgement(Verdict.IGNORE_IMPLAUSIBLE, offset)
    if abs(offset) <= tolerance_s:
        return Judgement(Verdict.KEEP, offset)
    return Judgement(Verdict.STEP, offset)


class NetworkTimeSource:
    def __init__(
        self,
        clock: Clock,
        ntp_synced: Callable[[], bool],
        *,
        set_system_clock: Callable[[float], None] | None = None,
        tolerance_s: float = 120.0,
    ) -> None:
        self.clock = clock
        self.ntp_synced = ntp_synced
        self.set_system_clock = set_system_clock
        self.tolerance_s = tolerance_s
        self._anchor: tuple[float, float] | None = None  # (network utc, monotonic at read)
        self.source: str | None = None

    def offer(self, reading: ModemTime | None) -> Judgement | None:
        """Take one modem reading (None: the modem has no time); step the clock if needed."""
        if reading is None:
            return None
        synced = self.ntp_synced()
        j = judge(reading, self.clock.wall(), synced, tolerance_s=self.tolerance_s)
        if j.verdict in (Verdict.KEEP, Verdict.STEP):
            self._anchor = (reading.utc_s, self.clock.monotonic())
            self.source = reading.source
        if j.verdict is Verdict.STEP and self.set_system_clock is not None:
            try:
                self.set_system_clock(reading.utc_s)
                log.warning("system clock stepped %+.0f s to the network time (%s)",
                            j.offset_s, reading.source)
            except OSError as exc:
                log.warning("cannot set the system clock (%s); using network time inside", exc)
        return j

    def quality(self) -> TimeQuality:
        if self.ntp_synced():
            return TimeQuality.NTP
        if self._anchor is not None:
            return TimeQuality.NETWORK
        return TimeQuality.UNSYNCHRONISED

    def wall(self) -> float:
        """Best UTC estimate: the system clock under NTP, else the network anchor advanced by
        monotonic time, else the system clock as it is."""
        if self._anchor is None or self.ntp_synced():
            return self.clock.wall()
        utc, mono = self._anchor
        return utc + (self.clock.monotonic() - mono)


# -- the two touches of the real system clock (Linux) ------------------------------------

_STA_UNSYNC = 0x0040
_TIME_ERROR = 5


class _Timex(ctypes.Structure):
    # struct timex from <sys/timex.h> (x86_64/aarch64 layout): the status field is what we
    # read; the rest is padding big enough for the kernel to write into.
    _fields_ = [
        ("modes", ctypes.c_uint),
        ("offset", ctypes.c_long),
        ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long),
        ("esterror", ctypes.c_long),
        ("status", ctypes.c_int),
        ("_rest", ctypes.c_byte * 256),
    ]


def kernel_clock_synced() -> bool:
    """True when NTP (chrony, systemd-timesyncd, ntpd) has synchronised the kernel clock,
    per adjtimex(2): not TIME_ERROR and STA_UNSYNC clear. False when it cannot be asked."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        tx = _Timex()
        state = libc.adjtimex(ctypes.byref(tx))
    except (OSError, AttributeError):
        return False
    return state not in (-1, _TIME_ERROR) and not (tx.status & _STA_UNSYNC)


def set_system_clock(utc_s: float) -> None:
    """Step CLOCK_REALTIME (needs CAP_SYS_TIME); OSError when not allowed."""
    import time  # the one place besides agent.clock that touches time, and only to set it

    time.clock_settime(time.CLOCK_REALTIME, utc_s)
