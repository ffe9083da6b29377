"""Probes bound to one link: `IcmpProber` (see `icmp`) and `SipOptionsProber`.

SIP OPTIONS over UDP from the link's address to each SBC: the cheapest test of exactly
the path the phones use, because a link that pings but cannot carry SIP (an ISP that
blocks or mangles port 5060) is down for voice. One socket per link, reused; bound like
the ICMP socket (device and source address).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import secrets
import socket
from collections.abc import Callable
from dataclasses import dataclass

from agent.health.icmp import IcmpProber, bind_to_link, oserror_text
from agent.health.sip import (
    SipParseError,
    SipResponse,
    build_options,
    counts_as_reachable,
    new_branch,
    parse_response,
    response_matches,
)
from drivers.types import ProbeResult

__all__ = ["IcmpProber", "SipOptionsProber"]

log = logging.getLogger(__name__)

#: RFC 3261 timers for a non-INVITE client transaction over UDP.
SIP_T1_S = 0.5
SIP_T2_S = 4.0


# -- SIP OPTIONS prober --------------------------------------------------------------


class _SipProtocol(asyncio.DatagramProtocol):
    def __init__(self, on_datagram: Callable[[bytes], None]) -> None:
        self._on_datagram = on_datagram

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self._on_datagram(data)

    def error_received(self, exc: Exception) -> None:
        log.debug("SIP probe socket error: %s", exc)


@dataclass
class _PendingOptions:
    call_id: str
    future: asyncio.Future[tuple[SipResponse, float]]


class SipOptionsProber:
    """SIP OPTIONS to the provider's SBCs over one link (UDP), one socket for all.

    Retransmits per RFC 3261 Timer E (T1 = 0.5 s, doubling to T2 = 4 s) until
    `timeout_s`, so one lost datagram does not make an SBC look unreachable. Any final
    response counts as answered (see `agent.health.sip.counts_as_reachable`); 1xx are
    ignored; a reply whose Via branch or Call-ID is not ours (a mangling SIP ALG) does
    not count.
    """

    def __init__(
        self,
        *,
        monotonic: Callable[[], float],
        source_address: str | None = None,
        device: str | None = None,
        timeout_s: float = 4.0,
        t1_s: float = SIP_T1_S,
        token: Callable[[int], str] = secrets.token_hex,
        local_port: int = 0,
    ) -> None:
        self._monotonic = monotonic
        self._fixed_port = local_port
        self._source_address = source_address
        self._device = device
        self._timeout_s = timeout_s
        self._t1_s = t1_s
        self._token = token
        self._transport: asyncio.DatagramTransport | None = None
        self._local_port = 0
        self._pending: dict[str, _PendingOptions] = {}

    async def _ensure_open(self) -> asyncio.DatagramTransport:
        if self._transport is not None and not self._transport.is_closing():
            return self._transport
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            bind_to_link(sock, self._source_address or "0.0.0.0", self._device, self._fixed_port)
            transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
                lambda: _SipProtocol(self._on_datagram), sock=sock
            )
        except BaseException:
            sock.close()
            raise
        self._transport = transport
        self._local_port = sock.getsockname()[1]
        return transport

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
        self._transport = None
        for pending in self._pending.values():
            if not pending.future.done():
                pending.future.cancel()
        self._pending.clear()

    def _local_host(self, destination: str, port: int) -> str:
        """The address the SBC will see, for Via and Contact (a route lookup, no packet)."""
        if self._source_address:
            return self._source_address
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            if self._device:
                probe.setsockopt(
                    socket.SOL_SOCKET, socket.SO_BINDTODEVICE, self._device.encode() + b"\0"
                )
            probe.connect((destination, port))
            host: str = probe.getsockname()[0]
            return host

    async def _resolve(self, host: str, port: int) -> str:
        with contextlib.suppress(ValueError):
            return str(ipaddress.IPv4Address(host))
        infos = await asyncio.get_running_loop().getaddrinfo(
            host, port, family=socket.AF_INET, type=socket.SOCK_DGRAM
        )
        return str(infos[0][4][0])

    async def probe(
        self, host: str, port: int = 5060, timeout_s: float | None = None
    ) -> ProbeResult:
        """One OPTIONS transaction with the SBC at host:port."""
        target = f"{host}:{port}"
        timeout = self._timeout_s if timeout_s is None else timeout_s
        try:
            transport = await self._ensure_open()
            address = await self._resolve(host, port)
            local_host = self._local_host(address, port)
        except OSError as exc:
            return ProbeResult(target, "sip", False, detail=f"cannot send: {oserror_text(exc)}")
        branch, call_id = new_branch(self._token(8)), self._token(12)
        request = build_options(
            sbc_host=host,
            sbc_port=port,
            local_host=local_host,
            local_port=self._local_port,
            branch=branch,
            call_id=call_id,
            from_tag=self._token(4),
        )
        loop = asyncio.get_running_loop()
        future: asyncio.Future[tuple[SipResponse, float]] = loop.create_future()
        self._pending[branch] = _PendingOptions(call_id, future)
        sent_at = self._monotonic()
        deadline = loop.time() + timeout
        wait_s, sends = self._t1_s, 0
        try:
            while True:
                try:
                    transport.sendto(request, (address, port))
                    sends += 1
                except OSError as exc:
                    return ProbeResult(
                        target, "sip", False, detail=f"send failed: {oserror_text(exc)}"
                    )
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    response, at = await asyncio.wait_for(
                        asyncio.shield(future), min(wait_s, remaining)
                    )
                except TimeoutError:
                    wait_s = min(2 * wait_s, SIP_T2_S)
                    # A retransmission with no time left to be answered is just bytes.
                    if deadline - loop.time() < 0.01:
                        break
                    continue
                code = response.status_code
                return ProbeResult(
                    target=target,
                    method="sip",
                    answered=counts_as_reachable(code),
                    rtt_s=max(0.0, at - sent_at),
                    detail=None if 200 <= code < 300 else f"SIP {code} {response.reason}".strip(),
                    sip_status=code,
                    extra={"retransmissions": str(sends - 1)} if sends > 1 else {},
                )
        finally:
            self._pending.pop(branch, None)
            if not future.done():
                future.cancel()
        return ProbeResult(target, "sip", False, detail="timeout", extra={"sent": str(sends)})

    def _on_datagram(self, data: bytes) -> None:
        try:
            response = parse_response(data)
        except SipParseError as exc:
            log.debug("ignoring a datagram that is not a SIP response: %s", exc)
            return
        if not response.is_final or response.via_branch is None:
            return
        pending = self._pending.get(response.via_branch)
        if pending is None or pending.future.done():
            return
        if response_matches(response, branch=response.via_branch, call_id=pending.call_id):
            pending.future.set_result((response, self._monotonic()))
