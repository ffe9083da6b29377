"""The RouterDriver protocol: what the agent asks of any router (Linux or RouterOS).

All methods are coroutines: a driver on a blocking library bridges with
`asyncio.to_thread` and keeps one command in flight per device.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol, runtime_checkable

from drivers.types import (
    Counters,
    LinkEvent,
    LinkStatus,
    ProbeResult,
    RouterState,
    VoipPath,
    VoipPolicy,
)


@runtime_checkable
class RouterDriver(Protocol):
    async def open(self) -> None:
        """Connect (or check privileges); raise NeedsHumanError when it can never work."""

    async def close(self) -> None: ...

    async def apply_policy(self, policy: VoipPolicy) -> None:
        """Install everything for VoIP-only failover except the switch itself.

        Idempotent: applying the same policy twice changes nothing. Reconciles what
        drifted. Never touches configuration that is not the agent's own.
        """

    async def set_voip_path(self, path: VoipPath) -> None:
        """Send VoIP by the primary or by the cellular link. Idempotent."""

    async def read_state(self) -> RouterState:
        """Read back from the device what is installed and which path VoIP takes, and
        what an installer checks before trusting it: whether a SIP helper rewrites SIP,
        and which firmware profile matched (RouterState documents each field)."""

    async def remove_all(self) -> int:
        """Remove everything the agent installed; return the number of items removed."""

    async def flush_voip_conntrack(self) -> int:
        """Delete SIP/RTP connection-tracking entries to the VoIP prefixes (never all).

        Phones then re-register at once over the new path instead of after 1-3 min.
        Returns the number of entries deleted; entries that expire meanwhile are fine.
        """

    async def active_calls(self) -> int:
        """Number of RTP flows to the VoIP prefixes that carried packets in the last seconds."""

    async def interface_counters(self, interface: str) -> Counters: ...

    async def link_status(self, interface: str) -> LinkStatus: ...

    def watch_carrier(self) -> AsyncIterator[LinkEvent]:
        """Carrier changes as they happen (the fast path: no probe needed)."""
        ...


@runtime_checkable
class RouterPinger(Protocol):
    """A router that runs ICMP probes itself, by link (RouterOS `/ping` with a routing
    table): what an agent that is not on the router uses to measure each link."""

    async def ping(self, target: str, via: VoipPath, count: int = 3) -> list[ProbeResult]: ...
