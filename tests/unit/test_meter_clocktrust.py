"""Clock trust from tables: when wall time is believed, and which time bytes get."""

from __future__ import annotations

import pytest

from agent.meter.clocktrust import (
    SYNC_WAIT_MAX_S,
    WALL_FLOOR_S,
    Anchor,
    Observation,
    TrustState,
    observe,
)

NOW = 1_750_000_000.0  # 2025-06-15
DAY = 86400.0
BOOT = "boot-a"


def anchored(mono: float = 100.0, wall: float = NOW, boot: str = BOOT, **kw) -> TrustState:
    return TrustState(high_water_wall_s=wall, anchor=Anchor(boot, mono, wall), **kw)


@pytest.mark.parametrize(
    ("name", "state", "obs", "trusted", "wall", "reason"),
    [
        ("fresh box, plausible clock", TrustState(), Observation(BOOT, 5, NOW, None),
         True, NOW, "plausible"),
        ("synchronised clock", TrustState(), Observation(BOOT, 5, NOW, True),
         True, NOW, "synchronised"),
        ("a date before 2024 is a clock never set", TrustState(),
         Observation(BOOT, 5, 86400.0 * 365, None), False, None, "before 2024"),
        ("behind the last time seen: a stale boot date",
         TrustState(high_water_wall_s=NOW), Observation(BOOT, 5, NOW - 3 * DAY, None),
         False, None, "behind"),
        ("a little behind (fake-hwclock's last save) is tolerated",
         TrustState(high_water_wall_s=NOW), Observation(BOOT, 5, NOW - 30, None),
         True, NOW - 30, "plausible"),
        ("a box with a time service waits for it after boot",
         TrustState(high_water_wall_s=NOW - DAY, sync_seen=True),
         Observation(BOOT, 5, NOW, False), False, None, "waiting"),
        ("... but not for ever",
         TrustState(high_water_wall_s=NOW - DAY, sync_seen=True,
                    untrusted_since_monotonic_s=5.0),
         Observation(BOOT, 5 + SYNC_WAIT_MAX_S, NOW, False), True, NOW, "plausible"),
        ("steady clock with an anchor", anchored(), Observation(BOOT, 160, NOW + 60, None),
         True, NOW + 60, "steadily"),
        ("a backward step is not believed: monotonic time goes on", anchored(),
         Observation(BOOT, 160, NOW - 3600, None), True, NOW + 60, "unconfirmed"),
        ("a forward step without a time service is the stale clock's correction",
         anchored(wall=WALL_FLOOR_S + 10), Observation(BOOT, 160, NOW, None),
         True, NOW, "stepped forward"),
        ("a forward step a time service has not confirmed is not believed",
         anchored(sync_seen=True), Observation(BOOT, 160, NOW + 40 * DAY, False),
         True, NOW + 60, "unconfirmed"),
        ("a synchronised backward step is believed", anchored(sync_seen=True),
         Observation(BOOT, 160, NOW - 3600, True), True, NOW - 3600, "synchronised"),
        ("an anchor from another boot means nothing", anchored(boot="boot-old"),
         Observation(BOOT, 5, NOW - 3 * DAY, None), False, None, "behind"),
        ("no boot id: no anchor, plausibility each time", TrustState(),
         Observation(None, 5, NOW, None), True, NOW, "plausible"),
    ],
)
def test_observe(name, state, obs, trusted, wall, reason):
    new, decision = observe(state, obs)
    assert decision.trusted is trusted, name
    assert decision.wall_s == wall, name
    assert reason in decision.reason, (name, decision.reason)
    if trusted:
        assert new.high_water_wall_s >= max(state.high_water_wall_s, wall)


def test_stale_boot_then_ntp_step_gives_held_moments_their_true_time():
    # The box was last seen at NOW; it boots at a stale date two days earlier.
    state = TrustState(high_water_wall_s=NOW)
    stale = NOW - 2 * DAY
    state, first = observe(state, Observation(BOOT, 10.0, stale, None))
    assert not first.trusted
    state, second = observe(state, Observation(BOOT, 70.0, stale + 60, None))
    assert not second.trusted
    # NTP steps the clock to the truth: 2 days + 3 minutes after the last time seen.
    true_now = NOW + 180
    state, third = observe(state, Observation(BOOT, 130.0, true_now, None))
    assert third.trusted and third.anchored
    assert state.anchor is not None
    # The moment counted at monotonic 10 s really was 120 s before the step.
    assert state.anchor.project(10.0) == true_now - 120


def test_json_round_trip():
    state = anchored(sync_seen=True)
    assert TrustState.from_json(state.to_json()) == state
    assert TrustState.from_json(None) == TrustState()
