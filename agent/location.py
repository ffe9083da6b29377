"""Pure: is the modem still at the business address it was installed at?

The phones' E911 address is the business address, and the provider's terms allow the
service only there and only in the United States or Canada. So at installation the agent
records what the modem sees (networks, tracking areas, eNodeBs, a GNSS fix where there
is one) and afterwards compares. A finding is an event for the provider, never a block.

Three conditions, each counted only once it persists (neighbour cells come and go: a
modem at a fixed site moves between a few cells in minutes, and a new cell may be built
next door):

- country: the serving network's MCC is not in the allowed list (default 302 Canada and
  310-316 United States, ITU-T E.212) for `country_min_samples` samples in a row and
  `country_min_duration_s`;
- cell: only eNodeBs (or, where there is no eNB id, cells or TACs) never seen at the site
  for `min_samples` samples in a row and `min_duration_s`; a single known cell in
  between resets the count;
- gnss: fixes beyond `gnss_radius_m` of the installation fix, with the same persistence.

Samples without the needed figure (no MCC, no cell, no fix) neither advance nor reset a
count. When a condition clears, a "returned" event follows. No I/O, clock or logging:
time comes in with each sample.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

from drivers.types import GnssFix, SignalReport

DEFAULT_ALLOWED_MCCS: frozenset[str] = frozenset(
    {"302", "310", "311", "312", "313", "314", "315", "316"}
)

REASONS = ("country", "cell", "gnss")


@dataclass(frozen=True)
class LocationPolicy:
    allowed_mccs: frozenset[str] = DEFAULT_ALLOWED_MCCS
    min_samples: int = 6
    min_duration_s: float = 2 * 3600.0
    country_min_samples: int = 3
    country_min_duration_s: float = 15 * 60.0
    gnss_radius_m: float = 1000.0


@dataclass(frozen=True)
class Sample:
    at_s: float
    mcc: str | None = None
    mnc: str | None = None
    tac: int | None = None
    enb_id: int | None = None
    cell_id: int | None = None
    gnss: tuple[float, float] | None = None

    @staticmethod
    def of(report: SignalReport, at_s: float, fix: GnssFix | None = None) -> Sample:
        return Sample(
            at_s=at_s,
            mcc=report.mcc,
            mnc=report.mnc,
            tac=report.tac,
            enb_id=report.enb_id,
            cell_id=report.cell_id,
            gnss=None if fix is None else (fix.lat_deg, fix.lon_deg),
        )


@dataclass(frozen=True)
class SiteBaseline:
    """What the modem saw during installation."""

    plmns: frozenset[str] = frozenset()
    tacs: frozenset[int] = frozenset()
    enb_ids: frozenset[int] = frozenset()
    cell_ids: frozenset[int] = frozenset()
    #: Mean of the installation fixes, and how many there were.
    gnss: tuple[float, float] | None = None
    gnss_fixes: int = 0
    samples: int = 0
    first_s: float | None = None
    last_s: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "plmns": sorted(self.plmns),
            "tacs": sorted(self.tacs),
            "enb_ids": sorted(self.enb_ids),
            "cell_ids": sorted(self.cell_ids),
            "gnss": list(self.gnss) if self.gnss else None,
            "gnss_fixes": self.gnss_fixes,
            "samples": self.samples,
            "first_s": self.first_s,
            "last_s": self.last_s,
        }

    @staticmethod
    def from_dict(d: dict[str, Any]) -> SiteBaseline:
        gnss = d.get("gnss")
        return SiteBaseline(
            plmns=frozenset(str(x) for x in d.get("plmns", [])),
            tacs=frozenset(int(x) for x in d.get("tacs", [])),
            enb_ids=frozenset(int(x) for x in d.get("enb_ids", [])),
            cell_ids=frozenset(int(x) for x in d.get("cell_ids", [])),
            gnss=(float(gnss[0]), float(gnss[1])) if gnss else None,
            gnss_fixes=int(d.get("gnss_fixes", 0)),
            samples=int(d.get("samples", 0)),
            first_s=d.get("first_s"),
            last_s=d.get("last_s"),
        )


def record(baseline: SiteBaseline, sample: Sample) -> SiteBaseline:
    """Add one installation-time sample (also used to accept a site after a move is confirmed)."""
    plmns, tacs, enbs, cells = baseline.plmns, baseline.tacs, baseline.enb_ids, baseline.cell_ids
    if sample.mcc and sample.mnc:
        plmns = plmns | {sample.mcc + sample.mnc}
    if sample.tac is not None:
        tacs = tacs | {sample.tac}
    if sample.enb_id is not None:
        enbs = enbs | {sample.enb_id}
    if sample.cell_id is not None:
        cells = cells | {sample.cell_id}
    gnss, fixes = baseline.gnss, baseline.gnss_fixes
    if sample.gnss is not None:
        if gnss is None:
            gnss, fixes = sample.gnss, 1
        else:
            fixes += 1
            gnss = (
                gnss[0] + (sample.gnss[0] - gnss[0]) / fixes,
                gnss[1] + (sample.gnss[1] - gnss[1]) / fixes,
            )
    return SiteBaseline(
        plmns=plmns,
        tacs=tacs,
        enb_ids=enbs,
        cell_ids=cells,
        gnss=gnss,
        gnss_fixes=fixes,
        samples=baseline.samples + 1,
        first_s=baseline.first_s if baseline.first_s is not None else sample.at_s,
        last_s=sample.at_s,
    )


@dataclass(frozen=True)
class Streak:
    since_s: float
    count: int
    detail: tuple[tuple[str, Any], ...] = ()


@dataclass(frozen=True)
class GuardState:
    streaks: tuple[tuple[str, Streak], ...] = ()
    raised: frozenset[str] = frozenset()

    def streak(self, reason: str) -> Streak | None:
        return dict(self.streaks).get(reason)


@dataclass(frozen=True)
class LocationEvent:
    kind: str  # "relocated" or "returned"
    reason: str  # "country", "cell" or "gnss"
    at_s: float
    detail: dict[str, Any] = field(default_factory=dict)


def distance_m(a: tuple[float, float], b: tuple[float, float]) -> float:
    """Great-circle distance (haversine, mean Earth radius 6371.0088 km)."""
    lat1, lon1, lat2, lon2 = map(math.radians, (a[0], a[1], b[0], b[1]))
    h = math.sin((lat2 - lat1) / 2) ** 2 + math.cos(lat1) * math.cos(lat2) * math.sin(
        (lon2 - lon1) / 2
    ) ** 2
    return 2 * 6_371_008.8 * math.asin(min(1.0, math.sqrt(h)))


def _conditions(
    baseline: SiteBaseline, sample: Sample, policy: LocationPolicy
) -> dict[str, tuple[bool | None, dict[str, Any]]]:
    """Each reason: True (looks moved), False (looks at home), None (this sample cannot say)."""
    out: dict[str, tuple[bool | None, dict[str, Any]]] = {}
    if sample.mcc is None:
        out["country"] = (None, {})
    else:
        out["country"] = (
            sample.mcc not in policy.allowed_mccs,
            {"mcc": sample.mcc, "mnc": sample.mnc},
        )
    cell: bool | None = None
    if sample.enb_id is not None and baseline.enb_ids:
        cell = sample.enb_id not in baseline.enb_ids
    elif sample.cell_id is not None and baseline.cell_ids:
        cell = sample.cell_id not in baseline.cell_ids
    elif sample.tac is not None and baseline.tacs:
        cell = sample.tac not in baseline.tacs
    out["cell"] = (
        cell,
        {
            "mcc": sample.mcc,
            "mnc": sample.mnc,
            "tac": sample.tac,
            "enb_id": sample.enb_id,
            "cell_id": sample.cell_id,
            "new_tac": sample.tac is not None and sample.tac not in baseline.tacs,
        },
    )
    if sample.gnss is None or baseline.gnss is None:
        out["gnss"] = (None, {})
    else:
        d = distance_m(sample.gnss, baseline.gnss)
        out["gnss"] = (d > policy.gnss_radius_m, {"distance_m": round(d)})
    return out


def observe(
    baseline: SiteBaseline, state: GuardState, sample: Sample, policy: LocationPolicy | None = None
) -> tuple[GuardState, list[LocationEvent]]:
    """Feed one sample; return the new state and any relocated/returned events."""
    policy = policy or LocationPolicy()
    streaks = dict(state.streaks)
    raised = set(state.raised)
    events: list[LocationEvent] = []
    for reason, (moved, detail) in _conditions(baseline, sample, policy).items():
        if moved is None:
            continue
        if not moved:
            streaks.pop(reason, None)
            if reason in raised:
                raised.discard(reason)
                events.append(LocationEvent("returned", reason, sample.at_s, detail))
            continue
        old = streaks.get(reason)
        streak = (
            Streak(sample.at_s, 1, tuple(detail.items()))
            if old is None
            else replace(old, count=old.count + 1, detail=tuple(detail.items()))
        )
        streaks[reason] = streak
        need_n = policy.country_min_samples if reason == "country" else policy.min_samples
        need_s = policy.country_min_duration_s if reason == "country" else policy.min_duration_s
        if (
            reason not in raised
            and streak.count >= need_n
            and sample.at_s - streak.since_s >= need_s
        ):
            raised.add(reason)
            events.append(
                LocationEvent(
                    "relocated",
                    reason,
                    sample.at_s,
                    {**detail, "since_s": streak.since_s, "samples": streak.count},
                )
            )
    new_state = GuardState(
        streaks=tuple(sorted(streaks.items())), raised=frozenset(raised)
    )
    return new_state, events


def state_to_dict(state: GuardState) -> dict[str, Any]:
    """A GuardState as JSON-able data (for the store, so a restart neither forgets a raised
    relocation nor raises it a second time)."""
    return {
        "streaks": {
            reason: {"since_s": s.since_s, "count": s.count, "detail": dict(s.detail)}
            for reason, s in state.streaks
        },
        "raised": sorted(state.raised),
    }


def state_from_dict(d: dict[str, Any] | None) -> GuardState:
    """The inverse of state_to_dict; unknown reasons and malformed entries are dropped."""
    if not isinstance(d, dict):
        return GuardState()
    streaks: dict[str, Streak] = {}
    raw = d.get("streaks")
    for reason, s in (raw.items() if isinstance(raw, dict) else ()):
        if reason not in REASONS or not isinstance(s, dict):
            continue
        try:
            raw_detail = s.get("detail")
            detail: dict[str, Any] = raw_detail if isinstance(raw_detail, dict) else {}
            streaks[reason] = Streak(
                float(s["since_s"]), int(s["count"]), tuple(sorted(detail.items()))
            )
        except (KeyError, TypeError, ValueError):
            continue
    raised = frozenset(r for r in d.get("raised") or () if r in REASONS)
    return GuardState(streaks=tuple(sorted(streaks.items())), raised=raised)


def verdict(baseline: SiteBaseline | None, state: GuardState) -> str:
    """One word for people: "no_baseline", "at_site" or "relocated"."""
    if state.raised:
        return "relocated"
    if baseline is None or baseline.samples == 0:
        return "no_baseline"
    return "at_site"
