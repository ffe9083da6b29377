"""The router's boot identity, for the meter: a marker that a reboot removes.

RouterOS has no boot id. Uptime gives a boot *time*, but only against the agent's own
clock, which is wrong after a power cut, and a rounding edge would make the meter count
a whole counter twice. So the driver leaves a marker: a dynamic address-list entry (it
has a timeout, and timed entries do not survive a reboot) whose comment carries a random
token. Same token: same boot. Marker gone: the router restarted (or someone removed it),
and a new token starts a new boot. It is looked at only after a reconnect, because a
reboot always drops the API session.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Callable

from . import commands as c
from . import parse

#: A documentation address (TEST-NET-1) in the agent's own list, with a long timeout so
#: the entry is dynamic; refreshed (same token) when it runs low.
BOOT_ADDRESS = "192.0.2.1"
BOOT_TIMEOUT = "35w"
REFRESH_BELOW_S = 30 * 86400.0
RESTARTED = ("The router restarted (or its boot marker was removed): its counters start "
             "again from zero.")

Call = Callable[..., Awaitable[list[dict[str, str]]]]
Remove = Callable[[str, list[str]], Awaitable[int]]


class BootMarker:
    def __init__(self, call: Call, remove: Remove, notice: Callable[[str], None]) -> None:
        self._call = call
        self._remove = remove
        self._notice = notice
        self._lock = asyncio.Lock()
        self._known: tuple[int, str] | None = None

    async def token(self, generation: Callable[[], int]) -> str:
        """The boot token; `generation` says the control session's (see Channel)."""
        async with self._lock:
            if self._known is not None and self._known[0] == generation():
                return self._known[1]
            rows = await self._call(f"{c.ADDRESS_LIST}/print", queries=[f"?list={c.BOOT_LIST}"],
                                    proplist=[".id", "comment", "timeout"])
            seen_in = generation()  # after the print: it may have reconnected
            found = []
            for row in rows:
                role = c.role_of(row.get("comment")) or ""
                if role.startswith(c.BOOT_ROLE + ":"):
                    found.append((row, role.split(":", 1)[1]))
            if found:
                row, token = found[0]
                left = parse.duration_s(row.get("timeout"))
                if left is not None and left < REFRESH_BELOW_S:
                    await self._add(token)
                    await self._remove(c.ADDRESS_LIST, [row[".id"]])
            else:
                token = secrets.token_hex(8)
                await self._add(token)
                if self._known is not None:
                    self._notice(RESTARTED)
            self._known = (seen_in, token)
            return token

    async def _add(self, token: str) -> None:
        await self._call(f"{c.ADDRESS_LIST}/add", {
            "list": c.BOOT_LIST, "address": BOOT_ADDRESS, "timeout": BOOT_TIMEOUT,
            "comment": f"{c.TAG}{c.BOOT_ROLE}:{token}",
        })
