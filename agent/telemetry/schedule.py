"""Telemetry by exception: which samples go to the fleet, and when (pure).

Why: on LTE every message is billed (a small `tele` message is ~400 bytes on the wire
with TLS, TCP and IP), and a site in standby has little to say. So a sample goes
only when it differs *materially* from the last one sent (`material_change`), plus a
heartbeat so the dashboard's figures never go stale for long. On the primary link a
change goes at once (at most one message per `min_interval_s`); on LTE changes are
gathered for `batch_cellular_s` and go as one message. The batch is bounded
(`max_batch`): the oldest samples are dropped and counted, and the count rides in the
next message (`dropped`).

The agent's MQTT client offers every sample (`offer`) and asks what is due (`due`)
with the monotonic time; this module reads no clock and does no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

from agent.telemetry.contract import TelemetrySample

#: |new - old| at or above which a figure has changed materially.
LINK_STEPS: dict[str, float] = {"loss_pct": 2.0, "mos": 0.3}
#: Figures whose step is relative: max(absolute floor, fraction of the old value).
LINK_RELATIVE: dict[str, tuple[float, float]] = {"rtt_ms": (20.0, 0.25), "jitter_ms": (10.0, 0.25)}
#: Radio steps sit above a fixed modem's measurement noise (several dB peak to peak):
#: a month of wobble must not be a month of messages.
SIGNAL_STEPS: dict[str, float] = {"rsrp_dbm": 8.0, "rsrq_db": 4.0, "sinr_db": 5.0, "rssi_dbm": 8.0}
#: Usage: a step of 1% of the cap, at least 5 MB (the meter has its own threshold events).
USAGE_STEP_FRACTION = 0.01
USAGE_STEP_MIN_BYTES = 5_000_000


def _moved(old: float | None, new: float | None, step: float) -> bool:
    return old is not None and new is not None and abs(new - old) >= step


def material_change(old: TelemetrySample, new: TelemetrySample) -> bool:
    """Would the fleet want to know? Mode, verdicts and carrier always; numbers by steps.

    A figure that becomes unknown (or known) is not a change on its own: the verdict
    that goes with it says what matters.
    """
    if old.mode != new.mode or set(old.links) != set(new.links):
        return True
    for role, link in new.links.items():
        was = old.links[role]
        if was.verdict != link.verdict or was.carrier_up != link.carrier_up:
            return True
        for key, step in LINK_STEPS.items():
            if _moved(getattr(was, key), getattr(link, key), step):
                return True
        for key, (floor, fraction) in LINK_RELATIVE.items():
            before = getattr(was, key)
            if _moved(before, getattr(link, key), max(floor, fraction * (before or 0.0))):
                return True
    if (old.signal is None) != (new.signal is None):
        return True
    if old.signal is not None and new.signal is not None:
        if old.signal.technology != new.signal.technology:
            return True
        if _moved(old.signal.bars, new.signal.bars, 2):
            return True
        for key, step in SIGNAL_STEPS.items():
            if _moved(getattr(old.signal, key), getattr(new.signal, key), step):
                return True
    if old.usage is not None and new.usage is not None:
        if old.usage.cycle_start != new.usage.cycle_start:
            return True
        cap = new.usage.cap_bytes or 0
        step = max(USAGE_STEP_MIN_BYTES, USAGE_STEP_FRACTION * cap)
        if _moved(old.usage.used_bytes, new.usage.used_bytes, step):
            return True
    elif (old.usage is None) != (new.usage is None):
        return True
    old_dropped = old.agent.events_dropped if old.agent else None
    new_dropped = new.agent.events_dropped if new.agent else None
    return (new_dropped or 0) > (old_dropped or 0)


@dataclass(frozen=True)
class TelemetryPolicy:
    heartbeat_s: float = 300.0
    heartbeat_cellular_s: float = 3600.0
    batch_cellular_s: float = 900.0
    #: On the primary, at most one message this often (a flapping figure is not a flood).
    min_interval_s: float = 10.0
    max_batch: int = 12


@dataclass(frozen=True)
class Due:
    samples: list[TelemetrySample]
    dropped: int
    why: str  # "change" or "heartbeat"


class TelemetrySchedule:
    def __init__(self, policy: TelemetryPolicy) -> None:
        self.policy = policy
        self._last_sent: TelemetrySample | None = None
        self._last_sent_s: float | None = None
        self._pending: list[TelemetrySample] = []
        self._batch_started_s: float | None = None
        self._latest: TelemetrySample | None = None
        self._dropped = 0
        #: Samples dropped since the start (the batch was full), for diagnostics.
        self.dropped_total = 0
        #: Heartbeats only, no change messages (the plan's cap is reached: see the meter).
        self.minimum = False

    def offer(self, sample: TelemetrySample, now_s: float) -> None:
        self._latest = sample
        reference = self._pending[-1] if self._pending else self._last_sent
        if self.minimum and reference is not None:
            return
        if reference is not None and not material_change(reference, sample):
            return
        if len(self._pending) >= self.policy.max_batch:
            self._pending.pop(0)
            self._dropped += 1
            self.dropped_total += 1
        self._pending.append(sample)
        if self._batch_started_s is None:
            self._batch_started_s = now_s

    def due(self, now_s: float, *, cellular: bool) -> Due | None:
        """What to send now, if anything; call `sent` once it went out."""
        if self._latest is None:
            return None
        p = self.policy
        heartbeat_s = p.heartbeat_cellular_s if cellular else p.heartbeat_s
        since_sent_s = None if self._last_sent_s is None else now_s - self._last_sent_s
        if self._pending:
            assert self._batch_started_s is not None
            if cellular:
                ready = now_s - self._batch_started_s >= p.batch_cellular_s
            else:
                ready = since_sent_s is None or since_sent_s >= p.min_interval_s
            if ready or (since_sent_s is not None and since_sent_s >= heartbeat_s):
                return Due(list(self._pending), self._dropped, "change")
        if since_sent_s is None or since_sent_s >= heartbeat_s:
            return Due([self._latest], self._dropped, "heartbeat")
        return None

    def next_due_s(self, now_s: float, *, cellular: bool) -> float | None:
        """Monotonic time of the next `due`, for the client's sleep (None: nothing to do)."""
        if self._latest is None:
            return None
        p = self.policy
        if self._last_sent_s is None:
            return now_s
        heartbeat_at = self._last_sent_s + (p.heartbeat_cellular_s if cellular else p.heartbeat_s)
        if not self._pending or self._batch_started_s is None:
            return heartbeat_at
        if cellular:
            return min(heartbeat_at, self._batch_started_s + p.batch_cellular_s)
        return min(heartbeat_at, self._last_sent_s + p.min_interval_s)

    def sent(self, due: Due, now_s: float) -> None:
        self._last_sent = due.samples[-1]
        self._last_sent_s = now_s
        sent_ids = {id(s) for s in due.samples}
        self._pending = [s for s in self._pending if id(s) not in sent_ids]
        self._batch_started_s = now_s if self._pending else None
        self._dropped = max(0, self._dropped - due.dropped)
