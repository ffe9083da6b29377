"""The provider's SBC: a real SIP user agent server (SIPp, Debian package sip-tester).

One SIPp process per SBC address, bound to that address on UDP 5060, running
`scenarios/sbc_uas.xml`, which answers:

- OPTIONS  -> 200 OK (Allow, Accept; To gets a tag)
- REGISTER -> 200 OK (the request's Contact echoed with `;expires=300`)
- INVITE   -> 100 Trying, 200 OK with an SDP offer (PCMU, the SBC address, port 16384,
  retransmitted until the ACK), then ACK, then BYE -> 200 OK

Via, From, To, Call-ID and CSeq are copied from the request as RFC 3261 §8.2.6 asks;
replies go to the request's source address and port (what `rport` asks, and what lets
them cross the CPE's NAT). Each new Call-ID starts a fresh scenario instance, and
`-deadcall_wait 0` lets a prober reuse one Call-ID for every OPTIONS. A request that
fits no branch (an ACK or BYE for an unknown dialog, CANCEL, MESSAGE ...) gets no
answer, and SIPp logs it to the error file: the lab's SBC is deliberately minimal.

    python -m hil.sims.sip_peer --address 203.0.113.10 [--port 5060]   # execs sipp
"""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

SCENARIO = Path(__file__).resolve().parent / "scenarios" / "sbc_uas.xml"
SIPP = "sipp"
#: SIPp opens a control socket (default 8888) on every address; give each peer its own.
CONTROL_PORT_BASE = 8888


class SipPeerUnavailable(RuntimeError):
    """SIPp is not installed."""


def sipp_path() -> str:
    path = shutil.which(SIPP)
    if path is None:
        raise SipPeerUnavailable(
            "sipp is not installed; install the Debian package sip-tester "
            "(scripts/bootstrap.sh does)"
        )
    return path


def sipp_argv(
    address: str,
    port: int = 5060,
    *,
    control_port: int = CONTROL_PORT_BASE,
    error_file: Path | None = None,
) -> list[str]:
    """The command line of one SBC peer bound to `address:port` (UDP)."""
    argv = [
        sipp_path(),
        "-sf", str(SCENARIO),
        "-i", address,
        "-p", str(port),
        "-mi", address,
        "-t", "u1",  # UDP, one socket: replies leave from address:port
        "-nostdin",
        "-deadcall_wait", "0",
        "-cp", str(control_port),
    ]
    if error_file is not None:
        argv += ["-trace_err", "-error_file", str(error_file)]
    return argv


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m hil.sims.sip_peer", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--address", required=True, help="the SBC address to bind")
    parser.add_argument("--port", type=int, default=5060)
    parser.add_argument("--control-port", type=int, default=CONTROL_PORT_BASE)
    parser.add_argument("--error-file", type=Path)
    args = parser.parse_args(argv)
    command = sipp_argv(args.address, args.port, control_port=args.control_port,
                        error_file=args.error_file)
    os.execv(command[0], command)


if __name__ == "__main__":
    main()
