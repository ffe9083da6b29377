"""The I/O shell around the location guard (agent/location.py, pure).

- The site baseline lives in the store's kv under `location.baseline` (written by
  `cpe-agent location record` at installation, or by `record_baseline` below); the guard's
  state under `location.guard`, so a restart neither forgets a raised relocation nor
  raises it twice. The baseline is read again at every report, so a baseline recorded
  while the agent runs takes effect at the next poll.
- `on_report(report, coverage)` is ModemWatch's `on_report` hook: one sample per report.
- `run()` (a task) asks the driver for a GNSS fix every `gnss_every_s` and feeds it as a
  sample of its own; a driver without GNSS (None, UnsupportedError) is asked no more.
- Each `relocated` / `returned` event goes once to `emit(kind, data)` (the agent's outbox).

Sample times are the injected clock's wall time (the streaks are persisted across restarts).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from agent import location
from agent.clock import Clock
from agent.location import GuardState, LocationEvent, LocationPolicy, Sample, SiteBaseline
from drivers.errors import DriverError, UnsupportedError
from drivers.modem.base import ModemDriver
from drivers.types import SignalReport

log = logging.getLogger(__name__)

BASELINE_KEY = "location.baseline"
STATE_KEY = "location.guard"

Emit = Callable[[str, dict[str, Any]], None]


class KeyValue(Protocol):
    def get(self, key: str) -> Any: ...

    def put(self, key: str, value: Any) -> None: ...


def load_baseline(kv: KeyValue) -> SiteBaseline | None:
    raw = kv.get(BASELINE_KEY)
    if not isinstance(raw, dict):
        return None
    try:
        return SiteBaseline.from_dict(raw)
    except (TypeError, ValueError, IndexError):
        log.warning("the stored site baseline is unreadable; record it again "
                    "with `cpe-agent location record`")
        return None


def save_baseline(kv: KeyValue, baseline: SiteBaseline) -> None:
    kv.put(BASELINE_KEY, baseline.to_dict())


def load_state(kv: KeyValue) -> GuardState:
    return location.state_from_dict(kv.get(STATE_KEY))


class LocationWatch:
    def __init__(
        self,
        kv: KeyValue,
        clock: Clock,
        *,
        emit: Emit | None = None,
        policy: LocationPolicy | None = None,
        driver: ModemDriver | None = None,
        gnss_every_s: float = 300.0,
    ) -> None:
        self.kv = kv
        self.clock = clock
        self.emit = emit or (lambda kind, data: None)
        self.policy = policy or LocationPolicy()
        self.driver = driver
        self.gnss_every_s = gnss_every_s
        self.state = load_state(kv)
        self.baseline: SiteBaseline | None = None
        self._saved = self._shape(self.state)

    # -- feeding ---------------------------------------------------------------------------

    def on_report(self, report: SignalReport, coverage: object = None) -> list[LocationEvent]:
        """ModemWatch's on_report hook (the coverage grade is not needed here)."""
        return self.observe(Sample.of(report, self.clock.wall()))

    def observe(self, sample: Sample) -> list[LocationEvent]:
        self.baseline = load_baseline(self.kv)
        self.state, events = location.observe(
            self.baseline or SiteBaseline(), self.state, sample, self.policy
        )
        self._persist()
        for event in events:
            self._emit(event)
        return events

    async def gnss_once(self) -> list[LocationEvent] | None:
        """Read one fix and feed it; None when the driver has no GNSS (never ask again)."""
        if self.driver is None:
            return None
        try:
            fix = await self.driver.gnss_fix()
        except UnsupportedError:
            return None
        except DriverError as exc:
            log.info("no GNSS fix from the modem: %s", exc)
            return []
        if fix is None:
            return []
        return self.observe(Sample(at_s=self.clock.wall(), gnss=(fix.lat_deg, fix.lon_deg)))

    async def run(self) -> None:
        """The GNSS task: a fix every `gnss_every_s` while the driver has GNSS."""
        while True:
            await self.clock.sleep(self.gnss_every_s)
            if await self.gnss_once() is None:
                log.info("the modem has no GNSS; the location guard uses the cells only")
                return

    # -- reading -----------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """For the status file and `cpe-agent location`."""
        return describe(self.baseline or load_baseline(self.kv), self.state)

    # -- helpers -----------------------------------------------------------------------------

    @staticmethod
    def _shape(state: GuardState) -> tuple[object, ...]:
        # What is worth a write: which streaks run (and since when) and what is raised; a
        # streak's growing count alone is not (one write per report would wear the flash).
        return (tuple((r, s.since_s) for r, s in state.streaks), state.raised)

    def _persist(self) -> None:
        shape = self._shape(self.state)
        if shape == self._saved:
            return
        try:
            self.kv.put(STATE_KEY, location.state_to_dict(self.state))
            self._saved = shape
        except Exception as exc:  # the store's own error: keep guarding in memory
            log.warning("cannot save the location guard's state: %s", exc)

    def _emit(self, event: LocationEvent) -> None:
        data = {"reason": event.reason, "at_s": event.at_s, **event.detail}
        log.warning("location guard: %s (%s) %s", event.kind, event.reason, event.detail)
        try:
            self.emit(event.kind, data)
        except Exception:
            log.exception("emitting %s failed", event.kind)


def describe(baseline: SiteBaseline | None, state: GuardState) -> dict[str, Any]:
    return {
        "verdict": location.verdict(baseline, state),
        "raised": sorted(state.raised),
        "streaks": {
            reason: {"since_s": s.since_s, "samples": s.count, **dict(s.detail)}
            for reason, s in state.streaks
        },
        "baseline": baseline.to_dict() if baseline is not None else None,
    }


def sample_from_figures(figures: Mapping[str, Any], at_s: float) -> Sample | None:
    """A sample from the modem figures in the running agent's status file."""
    def num(key: str) -> int | None:
        value = figures.get(key)
        with contextlib.suppress(TypeError, ValueError):
            return None if value is None else int(value)
        return None

    sample = Sample(
        at_s=at_s,
        mcc=str(figures["mcc"]) if figures.get("mcc") else None,
        mnc=str(figures["mnc"]) if figures.get("mnc") else None,
        tac=num("tac"),
        enb_id=num("enb_id"),
        cell_id=num("cell_id"),
    )
    if sample.mcc is None and sample.tac is None and sample.cell_id is None:
        return None
    return sample


async def record_baseline(
    driver: ModemDriver,
    clock: Clock,
    *,
    samples: int = 3,
    interval_s: float = 10.0,
    baseline: SiteBaseline | None = None,
) -> SiteBaseline:
    """Read the modem `samples` times, `interval_s` apart (with a GNSS fix when it has one),
    and add what it saw to `baseline`. The driver must be open. A report without any cell
    figure (not registered) is not counted; DriverError when none had one."""
    out = baseline or SiteBaseline()
    counted = 0
    gnss = True
    for i in range(samples):
        if i:
            await clock.sleep(interval_s)
        report = await driver.read_report()
        fix = None
        if gnss:
            try:
                fix = await driver.gnss_fix()
            except UnsupportedError:
                gnss = False
            except DriverError as exc:
                log.info("no GNSS fix from the modem: %s", exc)
        sample = Sample.of(report, clock.wall(), fix)
        if sample.mcc is None and sample.tac is None and sample.cell_id is None:
            continue
        out = location.record(out, sample)
        counted += 1
    if not counted:
        raise DriverError(
            "The modem saw no network in any sample, so there is nothing to record; "
            "check its antenna and SIM (`cpe-agent modem`) and record again."
        )
    return out


def policy_of(section: Any) -> LocationPolicy:
    """The guard's policy from the config's [location] section (agent.config.LocationSection)."""
    return LocationPolicy(
        allowed_mccs=frozenset(section.allowed_mccs),
        min_samples=section.min_samples,
        min_duration_s=section.min_duration_s,
        gnss_radius_m=section.gnss_radius_m,
    )
