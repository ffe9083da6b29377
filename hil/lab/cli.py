"""`python -m hil.lab`: build, impair, inspect and tear down the virtual lab (root).

    python -m hil.lab up [--prefix P] [--config-dir DIR] [--mqtt]
    python -m hil.lab down [--prefix P] [--config-dir DIR]
    python -m hil.lab status [--prefix P] [--json]
    python -m hil.lab impair primary|cellular blackhole | loss PCT | down | up | rate KBIT
                                              | delay MS | clear
    python -m hil.lab impair target ADDRESS dead|alive
    python -m hil.lab impair target clear
    python -m hil.lab exec NODE -- COMMAND...    (NODE: phone pc cpe isp lte inet sbc web)

The prefix defaults to $CPE_LAB_PREFIX, else `cpl-`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from hil.lab import topology as t
from hil.lab.lab import REPO_ROOT, Lab, LabError


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--prefix", help=f"namespace prefix (default ${t.PREFIX_ENV} or "
                        f"{t.DEFAULT_PREFIX!r})")
    common.add_argument("--config-dir", help="the lab's directory for agent.toml, pids and "
                        f"logs (default {t.DEFAULT_LAB_DIR} for the default prefix)")
    parser = argparse.ArgumentParser(prog="python -m hil.lab", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", parents=[common], help="build the lab (tearing down leftovers)")
    up.add_argument("--mqtt", action="store_true",
                    help=f"also start a mosquitto broker on {t.MQTT_ADDRESS}:{t.MQTT_PORT}")
    sub.add_parser("down", parents=[common], help="remove the lab, its processes and files")
    status = sub.add_parser("status", parents=[common], help="show what is alive")
    status.add_argument("--json", action="store_true")
    impair = sub.add_parser("impair", parents=[common], help="impair a link or a target")
    impair.add_argument("link", choices=[*t.LINK_NAMES, "target"])
    impair.add_argument("args", nargs="+", metavar="ARG")
    run = sub.add_parser("exec", parents=[common], help="run a command in a node's namespace")
    run.add_argument("node", choices=t.NODES)
    run.add_argument("argv", nargs=argparse.REMAINDER)
    return parser


def _impair(lab: Lab, link: str, args: list[str]) -> str:
    if link == "target":
        if args == ["clear"]:
            lab.impair("target", "clear")
            return "all targets alive"
        if len(args) != 2:
            raise LabError("use: impair target ADDRESS dead|alive, or impair target clear")
        address, state = args
        lab.impair("target", state, address)
        return f"target {address} {state}"
    kind, *rest = args
    if len(rest) > 1:
        raise LabError(f"'{kind}' takes at most one value")
    lab.impair(link, kind, rest[0] if rest else None)
    return f"{link}: {kind}{' ' + rest[0] if rest else ''}"


def _print_status(info: dict) -> None:
    print(f"lab {info['prefix']!r} ({info['lab_dir']})")
    for ns, alive in info["namespaces"].items():
        print(f"  namespace {ns:<16} {'up' if alive else 'absent'}")
    for name, proc in info["processes"].items():
        state = "running" if proc["alive"] else "gone"
        print(f"  process   {name:<16} pid {proc['pid']:<8} {state}")
    for ifname, carrier in info.get("carrier", {}).items():
        print(f"  cpe {ifname:<22} carrier {'up' if carrier else 'DOWN'}")
    for what, found in info.get("impairments", {}).items():
        print(f"  impairments {what:<14} {', '.join(found) if found else 'none'}")
    if info["config"]:
        print(f"  agent config: {info['config']}")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        lab = Lab(prefix=args.prefix, lab_dir=args.config_dir)
        if args.command == "up":
            started = time.monotonic()
            lab.up(mqtt=args.mqtt)
            agent = REPO_ROOT / ".venv" / "bin" / "cpe-agent"
            print(f"lab {lab.prefix!r} is up in {time.monotonic() - started:.1f} s "
                  f"({len(lab.namespaces())} namespaces; SBCs "
                  f"{', '.join(t.SBC_ADDRESSES.values())} answering SIP and UDP echo on port "
                  f"{t.ECHO_PORT}; web {t.WEB_ADDRESS})")
            if args.mqtt:
                print(f"mqtt broker: {t.MQTT_ADDRESS}:{t.MQTT_PORT} (mosquitto, no TLS)")
            print(f"agent config: {lab.config_path}")
            print("run a cpe-agent command inside the CPE's namespace, e.g.:")
            print(f"  ip netns exec {lab.ns(t.CPE)} {agent} status --config {lab.config_path}")
            print(f"tear it down: {sys.executable} -m hil.lab down"
                  + (f" --prefix {lab.prefix}" if lab.prefix != t.DEFAULT_PREFIX else ""))
        elif args.command == "down":
            lab.down()
            print(f"lab {lab.prefix!r} is down")
        elif args.command == "status":
            info = lab.status()
            if args.json:
                print(json.dumps(info, indent=2))
            else:
                _print_status(info)
            return 0 if all(info["namespaces"].values()) else 3
        elif args.command == "impair":
            print(_impair(lab, args.link, args.args))
        elif args.command == "exec":
            command = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
            if not command:
                raise LabError("exec needs a command, e.g. exec cpe -- ip route")
            os.execvp("ip", ["ip", "netns", "exec", lab.ns(args.node), *command])
    except LabError as exc:
        print(f"hil.lab: {exc}", file=sys.stderr)
        return 1
    return 0
