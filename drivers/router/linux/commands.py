"""The blocking commands the Linux driver needs, run off the event loop, in its namespace.

`nft` has no stable library API (libnftables' Python binding is not on every router),
so the driver runs the `nft` binary; namespace-local /proc values are read with
`ip netns exec ... cat` because /proc/sys/net shows the reader's own namespace. Each run
goes through `asyncio.to_thread` with a timeout, and failures map to the driver errors.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from typing import Any

from drivers.errors import DeviceReplyError, NeedsHumanError, RetryableError

from . import readback, rules

BOOT_ID_PATH = "/proc/sys/kernel/random/boot_id"
UDP_STREAM_TIMEOUT_PATH = "/proc/sys/net/netfilter/nf_conntrack_udp_timeout_stream"
#: The kernel default since 5.x, used when conntrack is not loaded (so nothing is active).
DEFAULT_UDP_STREAM_TIMEOUT_S = 120
NEEDS_ROOT = (
    "the agent lacks CAP_NET_ADMIN; run it as root or grant it CAP_NET_ADMIN "
    "(AmbientCapabilities= in the systemd unit)"
)


class Commands:
    def __init__(self, netns: str | None, timeout_s: float) -> None:
        self.netns = netns
        self.timeout_s = timeout_s

    async def nft(self, *args: str, script: str | None = None) -> str:
        result = await self.run(["nft", *args], script)
        if result.returncode != 0:
            raise nft_error(result.stderr, args)
        return result.stdout

    async def listing(self) -> readback.NftListing | None:
        """The agent's table as the kernel holds it, or None when there is none."""
        table = [rules.TABLE_FAMILY, rules.TABLE_NAME]
        result = await self.run(["nft", "-j", "list", "table", *table], None)
        if result.returncode != 0:
            if "No such file or directory" in result.stderr and "netns" not in result.stderr:
                return None
            raise nft_error(result.stderr, ("list", "table"))
        try:
            return readback.parse_listing(json.loads(result.stdout))
        except (ValueError, KeyError, TypeError) as exc:
            raise DeviceReplyError(
                "nft -j printed a listing the agent cannot read; report it with the raw reply.",
                raw=result.stdout,
            ) from exc

    async def ruleset(self) -> dict[str, Any] | None:
        """The namespace's whole ruleset as `nft -j` prints it, or None when it cannot be
        read: only the SIP helper check uses it, and that check may say "cannot tell",
        while the read-back it is part of must not fail for it."""
        result = await self.run(["nft", "-j", "list", "ruleset"], None)
        if result.returncode != 0:
            return None
        try:
            document = json.loads(result.stdout)
        except ValueError:
            return None
        return document if isinstance(document, dict) else None

    async def module_loaded(self, name: str) -> bool:
        """/sys/module is kernel-wide (not per namespace); a built-in module with
        parameters (nf_conntrack_sip has ports=) is listed there too."""
        return await asyncio.to_thread(os.path.isdir, f"/sys/module/{name}")

    async def read_proc(self, path: str) -> str | None:
        """A /proc value as seen inside the namespace (None when absent)."""
        if not self.netns:
            try:
                return await asyncio.to_thread(read_text, path)
            except OSError:
                return None
        result = await self.run(["cat", path], None)
        return result.stdout if result.returncode == 0 else None

    async def boot_id(self) -> str:
        """Kernel-wide (not per namespace): changes at every boot."""
        return (await asyncio.to_thread(read_text, BOOT_ID_PATH)).strip()

    async def udp_stream_timeout_s(self) -> int:
        text = await self.read_proc(UDP_STREAM_TIMEOUT_PATH)
        return int(text) if text and text.strip().isdigit() else DEFAULT_UDP_STREAM_TIMEOUT_S

    async def rp_filter_is_strict(self, interface: str) -> bool:
        """Strict reverse-path filtering (the larger of `all` and the interface wins) drops
        replies that arrive on the cellular link while their source routes via the
        primary; the agent reports it and leaves the customer's sysctls alone."""
        values = [
            await self.read_proc(f"/proc/sys/net/ipv4/conf/{name}/rp_filter")
            for name in ("all", interface)
        ]
        return max(int(v) if v and v.strip().isdigit() else 0 for v in values) == 1

    async def run(self, argv: list[str], stdin: str | None) -> subprocess.CompletedProcess[str]:
        command = ["ip", "netns", "exec", self.netns, *argv] if self.netns else argv
        try:
            return await asyncio.to_thread(
                subprocess.run,
                command,
                input=stdin,
                capture_output=True,
                text=True,
                timeout=self.timeout_s,
                check=False,
            )
        except FileNotFoundError as exc:
            raise NeedsHumanError(
                f"{command[0]} is not installed; install nftables and iproute2."
            ) from exc
        except subprocess.TimeoutExpired as exc:
            raise RetryableError(
                f"{' '.join(argv[:3])} did not finish within {self.timeout_s:g} s; "
                "the agent retries."
            ) from exc


def read_text(path: str) -> str:
    with open(path, encoding="ascii") as handle:
        return handle.read()


def nft_error(stderr: str, args: tuple[str, ...]) -> Exception:
    first = next((line for line in stderr.splitlines() if line.strip()), "no message")
    if "Operation not permitted" in stderr:
        return NeedsHumanError(f"nft was refused: {NEEDS_ROOT}.")
    if "Cannot open network namespace" in stderr:
        return NeedsHumanError(f"{first}; create the namespace or fix the netns option.")
    return DeviceReplyError(
        f"nft {' '.join(args[:2])} failed ({first}); check that the kernel has nftables "
        "with nat and masquerade, then report the raw reply.",
        raw=stderr,
    )
