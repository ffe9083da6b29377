"""Composition root: settings -> drivers (via the registry) -> services -> one asyncio loop.

The only agent module that touches `drivers.registry`. It builds the router and modem
drivers, the store, telemetry, the meter and the running agent (`agent.runtime.Agent`),
and runs them until a signal says stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from typing import Any

from agent import sdnotify
from agent.clock import Clock
from agent.config import ConfigError, Settings, read_secret
from agent.control import ControlServer
from agent.coverage import grade as coverage_grade
from agent.installer.service import TestBusyError
from agent.instance import instance_lock
from agent.meter.meter import Meter
from agent.modem import figures as modem_figures
from agent.runtime import Agent, build_policy, fsm_config
from agent.status import clear_status
from agent.store import Store
from agent.telemetry.commands import AgentHooks, CommandFailed, CommandHandler
from agent.telemetry.mqtt import TelemetryClient, TelemetryError
from drivers import registry
from drivers.modem.base import ModemDriver
from drivers.router.base import RouterDriver

log = logging.getLogger(__name__)


def build_router(settings: Settings) -> RouterDriver:
    router_cfg = settings.router
    options: dict[str, Any] = {
        "host": router_cfg.host,
        "port": router_cfg.port,
        "username": router_cfg.username,
        "password": read_secret(router_cfg.password, router_cfg.password_file),
        "plain_api": router_cfg.plain_api,
        "tls_ca_file": router_cfg.tls_ca_file,
        "tls_verify": router_cfg.tls_verify,
        "timeout_s": router_cfg.timeout_s,
    }
    driver_class = registry.load_router_driver(router_cfg.driver)
    driver: RouterDriver = driver_class(**options)
    return driver


def build_modem(settings: Settings) -> ModemDriver | None:
    """The LTE modem's driver, or None when the config names none."""
    modem = settings.modem
    if modem.driver == "none":
        return None
    driver_class = registry.load_modem_driver(modem.driver)
    if modem.driver == "at":
        driver: ModemDriver = driver_class(
            modem.port, vendor=modem.vendor, timeout_s=modem.timeout_s
        )
    elif modem.driver == "routeros-lte":
        # The MikroTik's built-in modem, over the [router] connection.
        r = settings.router
        driver = getattr(driver_class, "from_options")(  # noqa: B009 (a classmethod of one driver)
            host=r.host,
            port=r.port,
            username=r.username,
            password=read_secret(r.password, r.password_file),
            plain_api=r.plain_api,
            tls_ca_file=r.tls_ca_file,
            tls_verify=r.tls_verify,
            timeout_s=r.timeout_s,
            interface=modem.interface,
        )
    else:
        password = read_secret(modem.password, modem.password_file) or ""
        driver = driver_class(modem.host, password, timeout_s=modem.timeout_s)
    return driver


async def read_modem_once(settings: Settings) -> dict[str, Any]:
    """Open the configured modem, read its identity and one report, grade it, close."""
    driver = build_modem(settings)
    if driver is None:
        raise ConfigError(["[modem] driver is 'none': there is no modem to read."])
    return await _read_modem(driver)


async def read_modem_at_port(
    port: str, vendor: str | None, timeout_s: float = 5.0
) -> dict[str, Any]:
    """A modem on the bench, without a config file: `cpe-agent modem --port URL`."""
    driver_class = registry.load_modem_driver("at")
    return await _read_modem(driver_class(port, vendor=vendor, timeout_s=timeout_s))


async def _read_modem(driver: ModemDriver) -> dict[str, Any]:
    await driver.open()
    try:
        identity = await driver.identity()
        report = await driver.read_report()
    finally:
        await driver.close()
    figures = modem_figures.report_figures(report, coverage_grade(report))
    figures["identity"] = {
        k: str(v) if v is not None else None for k, v in asdict(identity).items()
    }
    return figures


async def remove_router_config(settings: Settings) -> int:
    router = build_router(settings)
    await router.open()
    try:
        return await router.remove_all()
    finally:
        await router.close()


async def run_agent(
    settings: Settings,
    *,
    clock: Clock | None = None,
    stop: asyncio.Event | None = None,
    then: Callable[[Agent], Awaitable[None]] | None = None,
    handle_signals: bool = True,
) -> None:
    """Run the agent until `stop` (or SIGTERM/SIGINT).

    `then`, when given, runs once the agent has started; the agent stops when it
    returns (`cpe-agent failover-test` with no agent running: the test in-process).
    """
    clock = clock or Clock()
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    if handle_signals:
        for signum in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(signum, stop.set)
    with instance_lock(settings.agent.state_dir):
        await _run_locked(settings, clock, stop, then)


async def _run_locked(
    settings: Settings,
    clock: Clock,
    stop: asyncio.Event,
    then: Callable[[Agent], Awaitable[None]] | None,
) -> None:
    store = Store(settings.agent.state_dir / "agent.db")
    telemetry: TelemetryClient | None = None
    telemetry_tasks: list[asyncio.Task[None]] = []
    if settings.mqtt.host:
        try:
            telemetry = TelemetryClient(settings.mqtt, settings.agent.device_id, store, clock)
        except TelemetryError as exc:
            # Reporting is not worth losing failover over: say so, and run without it.
            log.error("telemetry is off: %s", exc)
    router = build_router(settings)
    await router.open()
    try:
        agent = Agent(settings, router, store, clock, telemetry)
        agent.modem = build_modem(settings)
        meter = Meter(
            router, store, clock, settings, on_telemetry_minimum=agent.set_telemetry_minimum
        )
        agent.meter = meter
        if telemetry is not None:
            # Built before the client runs: it subscribes to cmd/req and cfg/des on connect.
            commands = CommandHandler(
                telemetry,
                store,
                AgentHooks(
                    apply_thresholds=agent.apply_thresholds,
                    current_thresholds=agent.current_thresholds,
                    reset_meter=lambda reason: meter.reset(reason, by="fleet"),
                    run_failover_test=lambda duration_s: _fleet_test(agent, duration_s),
                ),
                clock,
            )
            # Outside run_until's tasks: on stop they drain acknowledgements, then leave
            # with the delayed will so a planned restart does not flap the site offline.
        # The agent first (its monitor takes the fleet's saved threshold overrides), then
        # reporting: a command arriving at connect finds everything in place.
        await agent.start()
        if telemetry is not None:
            telemetry_tasks = [
                asyncio.create_task(telemetry.run(stop), name="mqtt"),
                asyncio.create_task(commands.run(stop), name="mqtt-commands"),
            ]
        control = ControlServer(agent)
        await control.start()
        sdnotify.notify("READY=1")
        if then is not None:
            telemetry_tasks.append(asyncio.create_task(_then_stop(then, agent, stop)))
        try:
            await agent.run_until(stop)
        finally:
            await control.close()
    finally:
        stop.set()
        await asyncio.gather(*telemetry_tasks, return_exceptions=True)
        await router.close()
        store.close()
        clear_status(settings.agent.runtime_dir)


async def _then_stop(
    then: Callable[[Agent], Awaitable[None]], agent: Agent, stop: asyncio.Event
) -> None:
    try:
        await then(agent)
    finally:
        stop.set()


async def _fleet_test(agent: Agent, duration_s: float) -> dict[str, Any]:
    try:
        return await agent.installer.run_for_fleet(duration_s)
    except TestBusyError as exc:
        raise CommandFailed(str(exc)) from exc


__all__ = [
    "Agent",
    "build_modem",
    "build_policy",
    "build_router",
    "fsm_config",
    "read_modem_once",
    "remove_router_config",
    "run_agent",
]
