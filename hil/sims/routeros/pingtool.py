"""`/ping` over the API: one `!re` per probe, running totals included, `!done` at the end.

Without `count` the command never ends (EvilFreelancer/routeros-api-php#82: "the
router will never issue !done whilst the command is running"); the client stops it
with /cancel. Answers come from the simulator's reachability map, looked up by host
and by `routing-table` or `interface`, so tests can make the primary path fail while
the LTE path answers.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .db import Trap, parse_duration

if TYPE_CHECKING:
    from .server import Command
    from .sim import RouterOSSim

PING_ARGS = {"address", "count", "interval", "size", "ttl", "routing-table", "interface",
             "src-address", "arp-ping", "do-not-fragment", "dscp", "vrf"}


@dataclass(frozen=True)
class PingAnswer:
    """How a host answers: an RTT in milliseconds, or None for no answer.

    `pattern` (if given) cycles per sequence number, e.g. (20.0, None) loses every
    second probe. `status` is what a probe without answer reports.
    """

    rtt_ms: float | None = 10.0
    pattern: tuple[float | None, ...] | None = None
    status: str = "timeout"
    ttl: int = 117

    def rtt(self, seq: int) -> float | None:
        if self.pattern:
            return self.pattern[seq % len(self.pattern)]
        return self.rtt_ms


def format_rtt(ms: float, v7: bool) -> str:
    """v7 prints 12ms345us; v6 prints whole milliseconds, 12ms."""
    if not v7:
        return f"{round(ms)}ms"
    whole = int(ms)
    us = round((ms - whole) * 1000)
    if us == 1000:
        whole, us = whole + 1, 0
    return f"{whole}ms{us}us" if us else f"{whole}ms"


async def run_ping(sim: RouterOSSim, cmd: Command) -> None:
    args = cmd.args
    for name in args:
        if name not in PING_ARGS:
            raise sim.db._unknown(name)
    host = args.get("address")
    if not host:
        raise Trap("missing value(s) of argument(s) address")
    count = int(args["count"]) if args.get("count") else None
    interval = parse_duration(args["interval"]) if args.get("interval") else 1.0
    size = args.get("size", "56")
    answer = sim.ping_answer(host, args.get("routing-table"), args.get("interface"))
    v7 = sim.profile.v7
    scale = sim.ping_time_scale
    loop = asyncio.get_running_loop()
    start = loop.time()
    sent = received = 0
    rtts: list[float] = []
    seq = 0
    while count is None or seq < count:
        rtt = answer.rtt(seq)
        sent += 1
        due = start + (seq * interval + (rtt / 1000 if rtt is not None else interval)) * scale
        await asyncio.sleep(max(0.0, due - loop.time()))
        row = {"seq": str(seq), "host": host}
        if rtt is not None:
            received += 1
            rtts.append(rtt)
            row.update(size=size, ttl=str(answer.ttl), time=format_rtt(rtt, v7))
        else:
            row["status"] = answer.status
        row.update({"sent": str(sent), "received": str(received),
                    "packet-loss": str(100 * (sent - received) // sent)})
        if rtts:
            row.update({"min-rtt": format_rtt(min(rtts), v7),
                        "avg-rtt": format_rtt(sum(rtts) / len(rtts), v7),
                        "max-rtt": format_rtt(max(rtts), v7)})
        await cmd.send("!re", row)
        seq += 1
        next_due = start + seq * interval * scale
        if count is None or seq < count:
            await asyncio.sleep(max(0.0, next_due - loop.time()))
    await cmd.done()
