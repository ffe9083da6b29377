"""The only module of the agent that reads time or sleeps.

Everything else takes a clock as an argument, so tests inject `ManualClock` and run
hours of dwell and damping in microseconds, with no sleep-and-hope.
"""

from __future__ import annotations

import asyncio
import time


class Clock:
    """Real time: monotonic for durations, wall time for reports and plan cycles."""

    def monotonic(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


class ManualClock(Clock):
    """A clock that moves only when told; `sleep` waits until `advance` passes its deadline."""

    def __init__(self, monotonic_s: float = 1000.0, wall_s: float = 1_800_000_000.0) -> None:
        self._monotonic_s = monotonic_s
        self._wall_s = wall_s
        self._sleepers: list[tuple[float, asyncio.Future[None]]] = []

    def monotonic(self) -> float:
        return self._monotonic_s

    def wall(self) -> float:
        return self._wall_s

    def advance(self, seconds: float) -> None:
        self._monotonic_s += seconds
        self._wall_s += seconds
        due = [(t, f) for t, f in self._sleepers if t <= self._monotonic_s]
        self._sleepers = [(t, f) for t, f in self._sleepers if t > self._monotonic_s]
        for _, fut in due:
            if not fut.done():
                fut.set_result(None)

    def jump_wall(self, seconds: float) -> None:
        """Step the wall clock only (NTP correction after a power cut)."""
        self._wall_s += seconds

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._sleepers.append((self._monotonic_s + seconds, fut))
        await fut
