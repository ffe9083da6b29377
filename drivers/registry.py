"""Driver names -> "module:Class", imported only when asked for.

Lazy, so an install without a driver's library (pyroute2 on a box beside a MikroTik,
librouteros on a Linux router) still starts with the other driver, and so the agent
never imports a protocol library it does not use.
"""

from __future__ import annotations

import importlib

from drivers.errors import UnsupportedError

ROUTER_DRIVERS: dict[str, str] = {
    "linux": "drivers.router.linux.driver:LinuxRouterDriver",
    "routeros": "drivers.router.routeros.driver:RouterOSDriver",
}


MODEM_DRIVERS: dict[str, str] = {
    "at": "drivers.modem.at.driver:AtModemDriver",
    "netgear": "drivers.modem.netgear:NetgearDriver",
    "routeros-lte": "drivers.modem.routeros_lte:RouterOSLteDriver",
}


def load_modem_driver(name: str) -> type:
    """The modem driver class registered as `name` (see load_router_driver)."""
    return _load("modem", MODEM_DRIVERS, name)


def load_router_driver(name: str) -> type:
    """The router driver class registered as `name`; UnsupportedError when it is unknown,
    not built yet, or its library is not installed."""
    return _load("router", ROUTER_DRIVERS, name)


def _load(kind: str, drivers: dict[str, str], name: str) -> type:
    target = drivers.get(name)
    if target is None:
        known = ", ".join(sorted(drivers))
        raise UnsupportedError(
            f"There is no {kind} driver named {name!r}; use one of: {known}.",
            remedy=f"Set the {kind} driver in the config to one of: {known}.",
        )
    module_name, _, class_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if module_name == missing or module_name.startswith(f"{missing}."):
            raise UnsupportedError(
                f"The {name} {kind} driver is not available in this version of cpe-agent "
                f"({module_name} is missing); use another driver or upgrade the agent."
            ) from exc
        raise UnsupportedError(
            f"The {name} {kind} driver needs the Python package {missing.split('.')[0]}, "
            "which is not installed; reinstall cpe-agent with its dependencies."
        ) from exc
    driver = getattr(module, class_name, None)
    if not isinstance(driver, type):
        raise UnsupportedError(
            f"The {name} {kind} driver is not available in this version of cpe-agent "
            f"({target} is missing); use another driver or upgrade the agent."
        )
    return driver
