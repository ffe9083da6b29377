"""`cpe-agent`: the command line. Renders results; maps errors to exit codes and a
one-sentence remedy; never shows a traceback to a person.

Exit codes (documented in the README):
  0 success
  1 unexpected internal error (a bug: please report with the log)
  2 bad configuration or usage
  3 the device needs a person (credentials, permissions, missing interface),
    or the agent is not running
  4 a transient device error (timeout, connection lost): try again
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from agent.config import DEFAULT_CONFIG_PATH, ConfigError, Settings, load_settings
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
    except StoreError as exc:
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
    p = add("demo", "run the demo in the virtual lab (root, Debian; needs a checkout)", _cmd_demo)
    p.add_argument("--dwell-s", type=float, default=8.0, help="shortened failback dwell")
    return parser


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


def _cmd_remove(args: argparse.Namespace) -> int:
    from agent.app import remove_router_config

    settings = _load(args)
    removed = asyncio.run(remove_router_config(settings))
    if args.json:
        print(json.dumps({"ok": True, "removed": removed}))
    else:
        print(f"Removed {removed} items the agent had installed on the router.")
    return EXIT_OK


def _cmd_demo(args: argparse.Namespace) -> int:
    root = Path(__file__).resolve().parents[1]
    if not (root / "hil" / "demo.py").exists():
        problem = "the demo needs the source checkout (hil/ is missing); run it from a git clone."
        return _fail(args, EXIT_CONFIG, [problem])
    command = [sys.executable, "-m", "hil.demo", "--dwell-s", str(args.dwell_s)]
    return subprocess.call(command, cwd=root)


if __name__ == "__main__":
    sys.exit(main())
