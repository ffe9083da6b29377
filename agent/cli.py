"""`cpe-agent`: the command line. Renders results; maps errors to exit codes and a
one-sentence remedy; never shows a traceback to a person.

Exit codes (documented in the README):
  0 success
  1 unexpected internal error (a bug: please report with the log)
  2 bad configuration or usage
  3 the device needs a person (credentials, permissions, missing interface),
    or the agent is not running
  4 a transient device error (timeout, connection lost): try again
`cpe-agent failover-test` adds its verdicts (docs/installer.md):
  5 WARN, 6 FAIL, 7 refused (a call in progress, or the site not in its normal state),
  130 stopped with Ctrl-C (the normal state restored)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from agent.config import DEFAULT_CONFIG_PATH, ConfigError, Settings, load_settings
from agent.instance import AlreadyRunningError
from agent.status import STALE_AFTER_S, read_status, render_status
from agent.store import StoreError
from drivers.errors import DriverError, NeedsHumanError, UnsupportedError

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_CONFIG = 2
EXIT_NEEDS_HUMAN = 3
EXIT_RETRY = 4


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "handler"):
        parser.print_help()
        return EXIT_CONFIG
    try:
        return int(args.handler(args))
    except ConfigError as exc:
        return _fail(args, EXIT_CONFIG, exc.problems)
    except (NeedsHumanError, UnsupportedError) as exc:
        return _fail(args, EXIT_NEEDS_HUMAN, [f"{exc} {exc.remedy}"])
    except DriverError as exc:
        return _fail(args, EXIT_RETRY, [f"{exc} {exc.remedy}"])
    except (StoreError, AlreadyRunningError) as exc:
        return _fail(args, EXIT_NEEDS_HUMAN, [str(exc)])
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # the last line of defence: one sentence, log has the rest
        logging.getLogger("cpe-agent").debug("internal error", exc_info=True)
        return _fail(
            args,
            EXIT_INTERNAL,
            [f"internal error: {exc!r}; run again with CPE_AGENT_DEBUG=1 and report the output."],
        )


def _fail(args: argparse.Namespace, code: int, problems: list[str]) -> int:
    if getattr(args, "json", False):
        print(json.dumps({"ok": False, "exit_code": code, "problems": problems}))
    else:
        for problem in problems:
            print(f"cpe-agent: {problem}", file=sys.stderr)
    return code


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cpe-agent",
        description="VoIP-only LTE failover, metering and fleet reporting for business sites.",
    )
    sub = parser.add_subparsers(metavar="COMMAND")

    def add(name: str, help_text: str, handler: Any) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument(
            "--config",
            type=Path,
            default=Path(os.environ.get("CPE_AGENT_CONFIG", DEFAULT_CONFIG_PATH)),
            help=f"configuration file (default {DEFAULT_CONFIG_PATH}, or $CPE_AGENT_CONFIG)",
        )
        p.set_defaults(handler=handler)
        return p

    add("run", "run the agent (the service's main command)", _cmd_run)
    p = add("status", "show the mode, each link's verdict and figures, and since when", _cmd_status)
    p.add_argument("--json", action="store_true", help="print one JSON object for machines")
    p = add("check-config", "validate the configuration file and say what is wrong", _cmd_check)
    p.add_argument("--json", action="store_true", help="print one JSON object for machines")
    p = add("remove", "remove everything the agent installed on the router", _cmd_remove)
    p.add_argument("--json", action="store_true", help="print one JSON object for machines")
    p = add("modem", "show the LTE modem: signal, coverage grade, registration, SIM", _cmd_modem)
    p.add_argument("--json", action="store_true", help="print one JSON object for machines")
    p.add_argument(
        "--port",
        help="ask a modem directly, no config file: a device path, a pty or socket://host:port",
    )
    p.add_argument("--vendor", choices=["quectel", "sierra", "telit"], help="with --port")
    p = add(
        "failover-test",
        "the installer's test: pre-checks, a forced failover to LTE and back, a verdict",
        _cmd_failover_test,
    )
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    p.add_argument(
        "--force", action="store_true", help="run even while a call is in progress (the call drops)"
    )
    p.add_argument(
        "--max-duration-s",
        type=float,
        default=None,
        help="a shorter time bound than [installer] max_duration_s (at least 20)",
    )
    p = add("demo", "run the demo in the virtual lab (root, Debian; needs a checkout)", _cmd_demo)
    p.add_argument("--dwell-s", type=float, default=8.0, help="shortened failback dwell")
    p = add(
        "meter",
        "show LTE data used this cycle, cap, projection, overage and talk minutes left",
        _cmd_meter,
    )
    p.add_argument("--json", action="store_true", help="print one JSON object for machines")
    meter_sub = p.add_subparsers(dest="meter_action", metavar="ACTION")
    r = meter_sub.add_parser(
        "reset",
        help="start this cycle's count from zero (asks first; logged and reported)",
        description="Start this cycle's LTE count from zero. Asks for confirmation; "
        "the reason is kept in the event log and reported to the provider.",
    )
    r.add_argument("--reason", required=True, help="why (kept in the log and reported)")
    r.add_argument("--yes", action="store_true", help="do not ask (for scripts)")
    # SUPPRESS: a sub-command's default must not overwrite what was given before it.
    r.add_argument(
        "--json",
        action="store_true",
        default=argparse.SUPPRESS,
        help="print one JSON object for machines",
    )
    r.add_argument(
        "--config", type=Path, default=argparse.SUPPRESS, help="configuration file (as for `meter`)"
    )
    p = add(
        "location",
        "show the site baseline and whether the modem still sees the business location",
        _cmd_location,
    )
    p.add_argument("--json", action="store_true", help="print one JSON object for machines")
    loc_sub = p.add_subparsers(dest="location_action", metavar="ACTION")
    r = loc_sub.add_parser(
        "record",
        help="record what the modem sees here as the site baseline (at installation)",
        description="Read the modem a few times (from the running agent when there is one) "
        "and save the networks, tracking areas and cells it sees as this site's baseline.",
    )
    r.add_argument("--samples", type=int, default=3, help="readings to take (default 3)")
    r.add_argument(
        "--interval-s", type=float, default=10.0, help="seconds between readings (default 10)"
    )
    r.add_argument("--add", action="store_true", help="add to the baseline instead of replacing it")
    r.add_argument(
        "--json",
        action="store_true",
        default=argparse.SUPPRESS,
        help="print one JSON object for machines",
    )
    r.add_argument(
        "--config",
        type=Path,
        default=argparse.SUPPRESS,
        help="configuration file (as for `location`)",
    )
    _add_fleet(sub)
    return parser


def _add_fleet(sub: Any) -> None:
    """`cpe-agent fleet ...`: the provider's side (docs/fleet.md); its own config file."""
    from agent.fleet.config import DEFAULT_FLEET_CONFIG, FLEET_CONFIG_ENV

    fleet = sub.add_parser(
        "fleet",
        help="the provider's side: live table of sites, failover e-mails",
        description="The provider's side of the MQTT contract (runs at the provider).",
    )
    actions = fleet.add_subparsers(metavar="ACTION")
    for name, help_text, handler in (
        ("watch", "live table of sites: state, link, signal, usage, last seen", _cmd_fleet_watch),
        ("notify", "e-mail customers and support on failover and recovery", _cmd_fleet_notify),
    ):
        p = actions.add_parser(name, help=help_text, description=help_text)
        p.add_argument(
            "--config",
            type=Path,
            default=Path(os.environ.get(FLEET_CONFIG_ENV, DEFAULT_FLEET_CONFIG)),
            help=f"fleet configuration (default {DEFAULT_FLEET_CONFIG}, or ${FLEET_CONFIG_ENV})",
        )
        p.add_argument("--json", action="store_true", help="print JSON for machines")
        p.set_defaults(handler=handler)
        if name == "watch":
            p.add_argument("--once", action="store_true", help="print the table once and exit")
            p.add_argument("--wait-s", type=float, default=5.0, help="with --once: wait at most")


def _load(args: argparse.Namespace) -> Settings:
    return load_settings(args.config)


def _setup_logging(settings: Settings) -> None:
    level = logging.DEBUG if os.environ.get("CPE_AGENT_DEBUG") else settings.agent.log_level.upper()
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )


def _cmd_run(args: argparse.Namespace) -> int:
    from agent.app import run_agent

    settings = _load(args)
    _setup_logging(settings)
    asyncio.run(run_agent(settings))
    return EXIT_OK


def _cmd_failover_test(args: argparse.Namespace) -> int:
    from agent.installer.command import TestCommandError, run_command

    settings = _load(args)
    logging.basicConfig(
        level=logging.WARNING,
        stream=sys.stderr,
        format="cpe-agent: %(levelname)s %(name)s: %(message)s",
    )
    try:
        return asyncio.run(
            run_command(
                settings, force=args.force, max_duration_s=args.max_duration_s, as_json=args.json
            )
        )
    except (TestCommandError, AlreadyRunningError) as exc:
        return _fail(args, EXIT_NEEDS_HUMAN, [str(exc)])


def _cmd_status(args: argparse.Namespace) -> int:
    settings = _load(args)
    status = read_status(settings.agent.runtime_dir)
    now = time.time()
    if status is None or now - float(status.get("written_wall_s", 0)) > STALE_AFTER_S:
        problem = (
            f"the agent is not running (no fresh status in {settings.agent.runtime_dir}); "
            "start it with `cpe-agent run` or `systemctl start cpe-agent`."
        )
        return _fail(args, EXIT_NEEDS_HUMAN, [problem])
    if args.json:
        print(json.dumps({"ok": True, **status}, sort_keys=True))
    else:
        print(render_status(status, now))
    return EXIT_OK


def _cmd_check(args: argparse.Namespace) -> int:
    settings = _load(args)
    if args.json:
        print(json.dumps({"ok": True, "config": settings.model_dump(mode="json")}, default=str))
    else:
        agent, router = settings.agent, settings.router
        print(f"{args.config}: valid (device {agent.device_id}, router {router.driver}).")
    return EXIT_OK


#: Modem fields a person reads first, in this order.
MODEM_LINES = (
    ("coverage", "Coverage"),
    ("registration", "Registration"),
    ("operator", "Operator"),
    ("access_tech", "Technology"),
    ("rsrp_dbm", "RSRP dBm"),
    ("rsrq_db", "RSRQ dB"),
    ("sinr_db", "SINR dB"),
    ("rssi_dbm", "RSSI dBm"),
    ("band", "Band"),
    ("tac", "TAC"),
    ("cell_id", "Cell"),
    ("sim_state", "SIM"),
)


def _cmd_modem(args: argparse.Namespace) -> int:
    """From the running agent when there is one (it owns the port); else read it once.
    With --port, the modem on the bench is asked directly and no config is read."""
    if args.port:
        from agent.app import read_modem_at_port

        return _show_modem(args, asyncio.run(read_modem_at_port(args.port, args.vendor)))
    settings = _load(args)
    status = read_status(settings.agent.runtime_dir)
    fresh = status is not None and time.time() - float(status.get("written_wall_s", 0)) <= (
        STALE_AFTER_S
    )
    if fresh and status is not None and status.get("modem"):
        figures = dict(status["modem"])
    else:
        from agent.app import read_modem_once

        figures = asyncio.run(read_modem_once(settings))
    return _show_modem(args, figures)


def _show_modem(args: argparse.Namespace, figures: dict[str, Any]) -> int:
    if args.json:
        print(json.dumps({"ok": True, **figures}, default=str, sort_keys=True))
        return EXIT_OK
    for key, label in MODEM_LINES:
        value = figures.get(key)
        print(f"{label:<13} {'unknown' if value is None else value}")
    return EXIT_OK


def _cmd_location(args: argparse.Namespace) -> int:
    from agent.modem import location_watch as lw
    from agent.store import Store

    settings = _load(args)
    if getattr(args, "location_action", None) == "record":
        return _location_record(args, settings)
    store = Store(settings.agent.state_dir / "agent.db")
    try:
        view = lw.describe(lw.load_baseline(store), lw.load_state(store))
    finally:
        store.close()
    if getattr(args, "json", False):
        print(json.dumps({"ok": True, **view}, sort_keys=True))
        return EXIT_OK
    base = view["baseline"]
    print(f"{'Verdict':<13} {view['verdict'].replace('_', ' ')}")
    if view["raised"]:
        print(f"{'Raised':<13} {', '.join(view['raised'])}")
    if base is None:
        print(f"{'Baseline':<13} none: record it with `cpe-agent location record`")
        return EXIT_OK
    recorded = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(base["last_s"] or 0))
    print(f"{'Recorded':<13} {recorded} ({base['samples']} readings)")
    print(f"{'Networks':<13} {', '.join(base['plmns']) or 'none'}")
    print(f"{'TACs':<13} {', '.join(str(t) for t in base['tacs']) or 'none'}")
    print(f"{'eNBs':<13} {', '.join(str(e) for e in base['enb_ids']) or 'none'}")
    if base["gnss"]:
        print(f"{'GNSS':<13} {base['gnss'][0]:.5f}, {base['gnss'][1]:.5f}")
    for reason, streak in view["streaks"].items():
        print(
            f"{'Watching':<13} {reason}: {streak['samples']} readings since "
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(streak['since_s']))}"
        )
    return EXIT_OK


def _location_record(args: argparse.Namespace, settings: Settings) -> int:
    from agent.clock import Clock
    from agent.location import SiteBaseline, record
    from agent.modem import location_watch as lw
    from agent.store import Store

    if args.samples < 1 or args.interval_s < 0:
        return _fail(args, EXIT_CONFIG, ["--samples must be 1 or more and --interval-s >= 0."])
    clock = Clock()
    store = Store(settings.agent.state_dir / "agent.db")
    try:
        start = lw.load_baseline(store) if args.add else None
        status = read_status(settings.agent.runtime_dir)
        if (
            status is not None
            and clock.wall() - float(status.get("written_wall_s", 0)) <= (STALE_AFTER_S)
            and status.get("modem")
        ):
            # The running agent owns the modem's port: sample its status file instead.
            baseline, source = start or SiteBaseline(), "agent"
            for i in range(args.samples):
                if i:
                    time.sleep(args.interval_s)
                fresh = read_status(settings.agent.runtime_dir) or {}
                sample = lw.sample_from_figures(fresh.get("modem") or {}, clock.wall())
                if sample is not None:
                    baseline = record(baseline, sample)
            if baseline.samples == (start.samples if start else 0):
                return _fail(
                    args,
                    EXIT_RETRY,
                    [
                        "the modem saw no network in any reading, so there is nothing to record; "
                        "check its antenna and SIM (`cpe-agent modem`) and record again."
                    ],
                )
        else:
            baseline = asyncio.run(_record_from_modem(settings, args, clock, start))
            source = "modem"
        lw.save_baseline(store, baseline)
    finally:
        store.close()
    if getattr(args, "json", False):
        print(
            json.dumps(
                {"ok": True, "source": source, "baseline": baseline.to_dict()}, sort_keys=True
            )
        )
    else:
        d = baseline.to_dict()
        print(
            f"Recorded the site from {d['samples']} readings ({source}): networks "
            f"{', '.join(d['plmns']) or 'none'}, TACs {d['tacs']}, eNBs {d['enb_ids']}"
            f"{', with a GNSS fix' if d['gnss'] else ''}."
        )
    return EXIT_OK


async def _record_from_modem(
    settings: Settings, args: argparse.Namespace, clock: Any, start: Any
) -> Any:
    from agent.app import build_modem
    from agent.modem import location_watch as lw

    driver = build_modem(settings)
    if driver is None:
        raise ConfigError(["[modem] driver is 'none': there is no modem to record the site from."])
    await driver.open()
    try:
        return await lw.record_baseline(
            driver, clock, samples=args.samples, interval_s=args.interval_s, baseline=start
        )
    finally:
        await driver.close()


def _cmd_remove(args: argparse.Namespace) -> int:
    from agent.app import remove_router_config

    settings = _load(args)
    removed = asyncio.run(remove_router_config(settings))
    if args.json:
        print(json.dumps({"ok": True, "removed": removed}))
    else:
        print(f"Removed {removed} items the agent had installed on the router.")
    return EXIT_OK


def _cmd_meter(args: argparse.Namespace) -> int:
    from agent.clock import Clock
    from agent.meter import admin, report

    settings = _load(args)
    now = Clock().wall()
    if getattr(args, "meter_action", None) == "reset":
        return _meter_reset(args, settings, now)
    status = read_status(settings.agent.runtime_dir)
    live = None
    if status is not None and now - float(status.get("written_wall_s", 0)) <= STALE_AFTER_S:
        live = admin.live_view(status)
    snap, source = (
        (live, "agent") if live is not None else (admin.stored_view(settings, now), "stored")
    )
    if snap is None:
        problem = (
            f"the meter has counted nothing yet (no meter state in {settings.agent.state_dir}); "
            "start the agent with `cpe-agent run` or `systemctl start cpe-agent`."
        )
        return _fail(args, EXIT_NEEDS_HUMAN, [problem])
    if args.json:
        print(json.dumps({"ok": True, "source": source, **snap}, sort_keys=True))
        return EXIT_OK
    print(report.render(snap))
    if source == "stored":
        print("Note      the agent is not running: figures as last written to its state.")
    return EXIT_OK


def _meter_reset(args: argparse.Namespace, settings: Settings, now: float) -> int:
    from agent.meter import admin
    from agent.meter.settings import MeterSettings

    path = admin.db_path(settings.agent.state_dir)
    books = admin.read_books(path)
    if books is None:
        problem = f"the meter has counted nothing yet in {path}; there is nothing to reset."
        return _fail(args, EXIT_NEEDS_HUMAN, [problem])
    reason = " ".join(args.reason.split())
    if not reason:
        return _fail(args, EXIT_CONFIG, ["a reset needs a reason; say why with --reason TEXT."])
    if not args.yes:
        if not sys.stdin.isatty():
            problem = "meter reset asks for confirmation; run it in a terminal or add --yes."
            return _fail(args, EXIT_CONFIG, [problem])
        used = books.cycle.totals.ip_bytes if books.cycle is not None else 0
        answer = input(
            f"Reset this cycle's LTE count ({used / 1e9:.3f} GB) to zero, reason "
            f"{reason!r}? This is reported to the provider. [y/N] "
        )
        if answer.strip().lower() not in ("y", "yes"):
            return _fail(args, EXIT_CONFIG, ["meter reset cancelled; nothing was changed."])
    rules = MeterSettings.from_settings(settings).rules
    doc = admin.reset_books(path, reason, now, rules)
    event = doc.outbox[-1].data if doc.outbox else {}
    if getattr(args, "json", False):
        print(json.dumps({"ok": True, "reset": event}, sort_keys=True))
    else:
        print(
            f"Meter reset ({event.get('ip_bytes_before', 0) / 1e9:.3f} GB before), reason "
            f"{reason!r}. The agent logs and reports it at its next poll (or next start)."
        )
    return EXIT_OK


def _cmd_demo(args: argparse.Namespace) -> int:
    root = Path(__file__).resolve().parents[1]
    if not (root / "hil" / "demo.py").exists():
        problem = "the demo needs the source checkout (hil/ is missing); run it from a git clone."
        return _fail(args, EXIT_CONFIG, [problem])
    command = [sys.executable, "-m", "hil.demo", "--dwell-s", str(args.dwell_s)]
    return subprocess.call(command, cwd=root)


def _fleet_problem(args: argparse.Namespace, exc: Exception) -> int:
    from agent.fleet.mailer import MailError
    from agent.fleet.state import StateError
    from agent.telemetry.mqtt import TelemetryError

    if isinstance(exc, TelemetryError | StateError | MailError):
        return _fail(args, EXIT_NEEDS_HUMAN, [str(exc)])
    if isinstance(exc, OSError):  # ConnectionError and friends: the broker is not there
        return _fail(args, EXIT_RETRY, [f"{exc}; check that the broker is up and try again."])
    raise exc


def _cmd_fleet_watch(args: argparse.Namespace) -> int:
    from agent.fleet.config import load_fleet_settings
    from agent.fleet.watch import watch

    settings = load_fleet_settings(args.config)
    if not args.once and args.json:
        return _fail(args, EXIT_CONFIG, ["--json needs --once (a live table is for people)."])
    try:
        asyncio.run(watch(settings, once=args.once, as_json=args.json, wait_s=args.wait_s))
    except Exception as exc:
        return _fleet_problem(args, exc)
    return EXIT_OK


def _cmd_fleet_notify(args: argparse.Namespace) -> int:
    from agent.fleet.config import load_fleet_settings, load_sites
    from agent.fleet.mailer import SmtpMailer
    from agent.fleet.notifier import Notifier
    from agent.fleet.state import NotifierState

    settings = load_fleet_settings(args.config)
    sites = load_sites(settings.notifier.sites_file)
    logging.basicConfig(
        level=logging.DEBUG if os.environ.get("CPE_AGENT_DEBUG") else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )

    async def run() -> None:
        state = NotifierState(settings.notifier.state_file)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(signum, stop.set)
        try:
            notifier = Notifier(settings, sites, state, SmtpMailer(settings.smtp).send)
            await notifier.run(stop)
        finally:
            state.close()

    try:
        asyncio.run(run())
    except Exception as exc:
        return _fleet_problem(args, exc)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
