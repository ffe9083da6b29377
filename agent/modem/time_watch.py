"""The I/O shell that feeds the modem's network time to a NetworkTimeSource.

`run()` (a task) reads `driver.network_time()` at start and then every `every_s` (an
hour), but only while the kernel clock is not NTP-synchronised: with NTP the modem is not
asked at all. Until a first usable reading (the modem not open yet, not registered, its
clock never set by the network) it asks again every `retry_s`. `sync_once()` is one round,
for tests and the CLI. The source steps the system clock itself when allowed.
"""

from __future__ import annotations

import logging
from typing import Any

from agent.clock import Clock
from agent.timesource import Judgement, NetworkTimeSource, Verdict
from drivers.errors import DriverError, UnsupportedError
from drivers.modem.base import ModemDriver

log = logging.getLogger(__name__)


class TimeWatch:
    def __init__(
        self,
        driver: ModemDriver,
        source: NetworkTimeSource,
        clock: Clock,
        *,
        every_s: float = 3600.0,
        retry_s: float = 60.0,
    ) -> None:
        self.driver = driver
        self.source = source
        self.clock = clock
        self.every_s = every_s
        self.retry_s = retry_s
        self.last: Judgement | None = None
        self.last_error: str | None = None
        self.readings = 0

    async def sync_once(self) -> Judgement | None:
        """One round: None when NTP has the clock or the modem gave no time."""
        if self.source.ntp_synced():
            return None
        try:
            reading = await self.driver.network_time()
        except UnsupportedError as exc:
            self.last_error = str(exc)
            return None
        except DriverError as exc:
            self.last_error = str(exc)
            log.info("no network time from the modem: %s", exc)
            return None
        self.readings += 1
        self.last_error = None if reading is not None else "the modem has no network time yet"
        judgement = self.source.offer(reading)
        if judgement is not None:
            self.last = judgement
        return judgement

    async def run(self) -> None:
        while True:
            judgement = await self.sync_once()
            good = judgement is not None and judgement.verdict in (Verdict.KEEP, Verdict.STEP)
            ntp = self.source.ntp_synced()
            await self.clock.sleep(self.every_s if good or ntp else self.retry_s)

    def status(self) -> dict[str, Any]:
        return {
            "quality": self.source.quality().value,
            "source": self.source.source,
            "offset_s": round(self.last.offset_s, 1) if self.last else None,
            "verdict": self.last.verdict.value if self.last else None,
            "last_error": self.last_error,
        }
