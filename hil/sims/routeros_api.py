"""A faithful RouterOS API server for tests, the lab and the demo.

    python -m hil.sims.routeros_api --listen 127.0.0.1:8728 --profile 7.18 \
        --model RB2011 --user agent --password s3cret [--control 127.0.0.1:8799] \
        [--tls-listen 127.0.0.1:8729 --tls-cert cert.pem --tls-key key.pem]

On start it prints one JSON line with the bound addresses (useful with port 0), then
serves until interrupted. The implementation lives in hil/sims/routeros/.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading

from hil.sims.routeros import MODELS, PROFILES, PingAnswer, RouterOSSim, control_call

__all__ = ["PingAnswer", "RouterOSSim", "control_call", "main"]


def _hostport(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host or "127.0.0.1", int(port)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hil.sims.routeros_api",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--listen", type=_hostport, default=("127.0.0.1", 8728))
    parser.add_argument("--profile", choices=sorted(PROFILES), default="7.18")
    parser.add_argument("--model", choices=sorted(MODELS), default="RB2011")
    parser.add_argument("--user", default="admin")
    parser.add_argument("--password", default="")
    parser.add_argument("--group", default="full", help="user group (read, write, full)")
    parser.add_argument("--control", type=_hostport, help="JSON-lines side channel HOST:PORT")
    parser.add_argument("--tls-listen", type=_hostport, help="api-ssl HOST:PORT")
    parser.add_argument("--tls-cert")
    parser.add_argument("--tls-key")
    parser.add_argument("--ping-time-scale", type=float, default=1.0)
    args = parser.parse_args(argv)
    if bool(args.tls_cert) != bool(args.tls_key) or (args.tls_listen and not args.tls_cert):
        parser.error("--tls-listen needs both --tls-cert and --tls-key")
    host, port = args.listen
    try:
        sim = RouterOSSim(
            profile=args.profile, model=args.model, user=args.user, password=args.password,
            group=args.group, host=host, port=port, tls_cert=args.tls_cert,
            tls_key=args.tls_key, tls_port=args.tls_listen[1] if args.tls_listen else 0,
            control_port=args.control[1] if args.control else None,
            ping_time_scale=args.ping_time_scale,
        )
        sim.start()
    except (ValueError, OSError) as exc:
        print(f"routeros sim: {exc}", file=sys.stderr)
        return 2
    ready = {"api": list(sim.address), "profile": args.profile, "model": args.model}
    if sim.tls_address:
        ready["api_ssl"] = list(sim.tls_address)
    if sim.control_address:
        ready["control"] = list(sim.control_address)
    print(json.dumps(ready), flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    sim.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
