"""When the wall clock can be believed, and what wall time counted bytes belong to. Pure.

A box without a battery-backed clock boots after a power cut at a stale date (1970,
the firmware's build date, or the last time fake-hwclock saved) and jumps when NTP or
the modem's network time arrives. Bytes must never land in the wrong month because of
that, never roll a cycle, and never be lost or counted twice.

The tools:

- The OS's synchronisation flag (`synced`: True, False, or None when unknown). A box
  that has once reported True has a time service; after a boot it waits for it.
- The high-water mark: the latest trusted wall time ever seen (persisted). A clock
  that reads earlier than that has gone back, most likely to a stale boot date.
- The anchor: a trusted (monotonic, wall) pair from this boot. CLOCK_MONOTONIC never
  jumps, so `anchor.wall + (mono - anchor.mono)` is the true wall time of any moment
  of this boot, including moments counted before the clock was set. Bytes counted
  while untrusted are held with their monotonic time and get their true wall time
  from the first anchor.

`observe` decides, for one reading of the clocks, whether wall time is trusted and
which wall time to attribute bytes to (see the rule table in docs/meter.md).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

#: Wall times before this are never trusted (2024-01-01T00:00:00Z): older than any
#: build of this software, so a clock that reads earlier has not been set.
WALL_FLOOR_S = 1_704_067_200.0
#: How far the wall clock may drift from the anchor's projection between readings
#: before it counts as a step (NTP slews at most 500 ppm: 0.5 ms per second).
STEP_TOLERANCE_S = 30.0
#: A clock this far behind the high-water mark has gone back (fake-hwclock saves hourly).
BEHIND_TOLERANCE_S = 60.0
#: Without a sync flag for this long after boot, a box that has a time service falls
#: back to the plausibility rules rather than holding bytes for ever.
SYNC_WAIT_MAX_S = 6 * 3600.0


@dataclass(frozen=True)
class Anchor:
    host_boot_id: str
    monotonic_s: float
    wall_s: float

    def project(self, monotonic_s: float) -> float:
        return self.wall_s + (monotonic_s - self.monotonic_s)


@dataclass(frozen=True)
class TrustState:
    high_water_wall_s: float = 0.0
    #: The OS has reported a synchronised clock at least once on this box.
    sync_seen: bool = False
    anchor: Anchor | None = None
    #: Monotonic time of the first observation without trust in this boot.
    untrusted_since_monotonic_s: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "high_water_wall_s": self.high_water_wall_s,
            "sync_seen": self.sync_seen,
            "anchor": None
            if self.anchor is None
            else {
                "host_boot_id": self.anchor.host_boot_id,
                "monotonic_s": self.anchor.monotonic_s,
                "wall_s": self.anchor.wall_s,
            },
        }

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> TrustState:
        if not data:
            return cls()
        anchor = data.get("anchor")
        return cls(
            high_water_wall_s=float(data.get("high_water_wall_s", 0.0)),
            sync_seen=bool(data.get("sync_seen", False)),
            anchor=None
            if not anchor
            else Anchor(
                str(anchor["host_boot_id"]),
                float(anchor["monotonic_s"]),
                float(anchor["wall_s"]),
            ),
        )


@dataclass(frozen=True)
class Observation:
    #: The host's boot id (None when unknown: then no anchor survives a restart).
    host_boot_id: str | None
    monotonic_s: float
    wall_s: float
    synced: bool | None


@dataclass(frozen=True)
class Decision:
    trusted: bool
    #: The wall time to attribute bytes counted now to (None when not trusted).
    wall_s: float | None
    reason: str
    #: A new anchor was taken: bytes held from this boot can now be given their time.
    anchored: bool = False


def observe(state: TrustState, obs: Observation) -> tuple[TrustState, Decision]:
    anchor = state.anchor
    if anchor is not None and (obs.host_boot_id is None or anchor.host_boot_id != obs.host_boot_id):
        anchor = None  # another boot: monotonic time restarted, the anchor means nothing
    sync_seen = state.sync_seen or obs.synced is True

    if obs.synced is True:
        return _trust(state, obs, sync_seen, "the clock is synchronised")
    if anchor is not None:
        projected = anchor.project(obs.monotonic_s)
        step_s = obs.wall_s - projected
        if abs(step_s) <= STEP_TOLERANCE_S:
            return _trust(state, obs, sync_seen, "the clock runs steadily")
        if step_s > 0 and not sync_seen and _plausible(state, obs.wall_s):
            # A forward step on a box with no sync flag: the usual correction of a
            # stale clock. Trust the new time from here on.
            return _trust(state, obs, sync_seen, f"the clock stepped forward {step_s:.0f} s")
        # A backward step, or a step a time service has not confirmed: keep counting on
        # the continuous time of the anchor.
        new_state = replace(
            state,
            sync_seen=sync_seen,
            high_water_wall_s=max(state.high_water_wall_s, projected),
            untrusted_since_monotonic_s=None,
        )
        reason = f"the clock stepped {step_s:+.0f} s unconfirmed; counting on monotonic time"
        return new_state, Decision(True, projected, reason)

    # No anchor in this boot yet.
    waiting_for_sync = sync_seen and obs.synced is False
    since = state.untrusted_since_monotonic_s
    if since is None:
        since = obs.monotonic_s
    if waiting_for_sync and obs.monotonic_s - since < SYNC_WAIT_MAX_S:
        return _distrust(state, sync_seen, since, "waiting for the time service to synchronise")
    if obs.wall_s < WALL_FLOOR_S:
        return _distrust(state, sync_seen, since, "the clock reads a date before 2024")
    if obs.wall_s < state.high_water_wall_s - BEHIND_TOLERANCE_S:
        behind = state.high_water_wall_s - obs.wall_s
        return _distrust(
            state, sync_seen, since, f"the clock is {behind:.0f} s behind the last time seen"
        )
    return _trust(state, obs, sync_seen, "the clock is plausible")


def _plausible(state: TrustState, wall_s: float) -> bool:
    return wall_s >= WALL_FLOOR_S and wall_s >= state.high_water_wall_s - BEHIND_TOLERANCE_S


def _trust(
    state: TrustState, obs: Observation, sync_seen: bool, reason: str
) -> tuple[TrustState, Decision]:
    anchor = None
    if obs.host_boot_id is not None:
        anchor = Anchor(obs.host_boot_id, obs.monotonic_s, obs.wall_s)
    new_state = TrustState(
        high_water_wall_s=max(state.high_water_wall_s, obs.wall_s),
        sync_seen=sync_seen,
        anchor=anchor,
        untrusted_since_monotonic_s=None,
    )
    previous = state.anchor
    re_anchored = (
        previous is None
        or anchor is None
        or previous.host_boot_id != anchor.host_boot_id
        or abs(previous.project(obs.monotonic_s) - obs.wall_s) > STEP_TOLERANCE_S
    )
    return new_state, Decision(True, obs.wall_s, reason, anchored=re_anchored)


def _distrust(
    state: TrustState, sync_seen: bool, since: float, reason: str
) -> tuple[TrustState, Decision]:
    new_state = replace(
        state, sync_seen=sync_seen, anchor=None, untrusted_since_monotonic_s=since
    )
    return new_state, Decision(False, None, reason)
