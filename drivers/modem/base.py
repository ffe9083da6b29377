"""The ModemDriver protocol: what the agent asks of any cellular modem.

All methods are coroutines; a driver on a blocking library (pyserial, urllib) bridges with
`asyncio.to_thread` or a reader thread and keeps one command in flight per device. Every
failure is one of `drivers.errors`: `RetryableError` when the modem did not answer in
time, `DeviceReplyError` (a `RetryableError`) when it answered with something wrong or
unreadable (the raw text is kept), `NeedsHumanError` when it can never work as
configured, `UnsupportedError` when the device lacks the feature.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol, runtime_checkable

from drivers.types import GnssFix, ModemEvent, ModemIdentity, ModemTime, SignalReport


@runtime_checkable
class ModemDriver(Protocol):
    #: Short name for reports and logs ("at/quectel", "netgear", "routeros-lte").
    name: str

    async def open(self) -> None:
        """Connect and prepare the modem (echo off, numeric errors, registration reports)."""

    async def close(self) -> None: ...

    async def ping(self) -> None:
        """Cheapest round trip (AT -> OK); raises RetryableError when there is no answer."""

    async def identity(self) -> ModemIdentity: ...

    async def read_report(self) -> SignalReport:
        """One normalised report: signal, registration, cell, SIM, identifiers."""

    async def network_time(self) -> ModemTime | None:
        """The network's time (NITZ) or the modem clock; None when it has never been set."""

    async def gnss_fix(self) -> GnssFix | None:
        """A position when the modem has GNSS and a fix; None otherwise."""

    async def set_radio(self, on: bool) -> None:
        """Turn the radio on (full functionality) or off (airplane mode)."""

    async def reset(self) -> None:
        """Restart the modem the vendor's way and return once it answers again."""

    def events(self) -> AsyncIterator[ModemEvent]:
        """Unsolicited news (registration, SIM, restart) as it happens; may never yield."""
        ...
