"""Checks of a VoipPolicy that every router driver makes the same way (pure).

One sentence per problem, naming the config key to fix; the drivers add only what is
their own (rule priorities on Linux, probe ports on RouterOS).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from drivers.errors import NeedsHumanError, UnsupportedError


def check_port(port: int, what: str) -> None:
    if not 1 <= port <= 65535:
        raise NeedsHumanError(f"{what} {port} is not a port number (1-65535); fix the config.")


def check_gateway(gateway: str | None) -> None:
    if gateway is None:
        return
    try:
        ipaddress.IPv4Address(gateway)
    except ValueError as exc:
        raise NeedsHumanError(
            f"The cellular gateway {gateway!r} is not an IPv4 address; fix links.cellular.gateway."
        ) from exc


def ipv4_networks(
    prefixes: Iterable[str], what: str, *, driver: str, strict: bool
) -> tuple[ipaddress.IPv4Network, ...]:
    """The prefixes as networks; `strict` refuses host bits set (a likely typo)."""
    out: list[ipaddress.IPv4Network] = []
    for text in prefixes:
        try:
            network = ipaddress.ip_network(text, strict=strict)
        except ValueError as exc:
            hint = "host bits set?" if strict else "not an address or prefix"
            raise NeedsHumanError(
                f"{what} entry {text!r} is not a network prefix ({hint}); fix the config."
            ) from exc
        if network.version != 4:
            raise UnsupportedError(
                f"{what} entry {text} is IPv6, which the {driver} driver does not steer yet; "
                "list IPv4 prefixes only."
            )
        out.append(ipaddress.IPv4Network(network))
    return tuple(out)
