"""An in-memory RouterDriver for testing the agent's shell without a kernel.

It records every call, can be told to fail or to lie on read-back, and reports
carrier events pushed by the test. The real drivers are tested against the same
contract in tests/contract and tests/netns.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from drivers.errors import RetryableError
from drivers.types import Counters, LinkEvent, LinkStatus, RouterState, VoipPath, VoipPolicy


class FakeRouter:
    def __init__(self) -> None:
        self.calls: list[str] = []
        self.policy: VoipPolicy | None = None
        self.path = VoipPath.PRIMARY
        self.fail_next_set_path = 0
        self.ignore_set_path = False
        self.drift: tuple[str, ...] = ()
        self.calls_active = 0
        self.flushed = 0
        self.carrier: dict[str, bool] = {}
        self.events: asyncio.Queue[LinkEvent] = asyncio.Queue()

    async def open(self) -> None:
        self.calls.append("open")

    async def close(self) -> None:
        self.calls.append("close")

    async def apply_policy(self, policy: VoipPolicy) -> None:
        self.calls.append("apply_policy")
        self.policy = policy
        self.drift = ()

    async def set_voip_path(self, path: VoipPath) -> None:
        self.calls.append(f"set_path {path.value}")
        if self.fail_next_set_path:
            self.fail_next_set_path -= 1
            raise RetryableError("router timed out")
        if not self.ignore_set_path:
            self.path = path

    async def read_state(self) -> RouterState:
        self.calls.append("read_state")
        return RouterState(self.policy is not None, self.path, self.drift)

    async def remove_all(self) -> int:
        self.calls.append("remove_all")
        self.policy = None
        return 5

    async def flush_voip_conntrack(self) -> int:
        self.calls.append("flush")
        self.flushed += 2
        return 2

    async def active_calls(self) -> int:
        return self.calls_active

    async def interface_counters(self, interface: str) -> Counters:
        return Counters(interface, 0, 0, 0, 0, "boot-1")

    async def link_status(self, interface: str) -> LinkStatus:
        return LinkStatus(interface, self.carrier.get(interface, True))

    async def watch_carrier(self) -> AsyncIterator[LinkEvent]:
        while True:
            yield await self.events.get()
