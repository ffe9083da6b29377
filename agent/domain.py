"""The agent's vocabulary: link roles, verdicts, modes, actions and events.

Pure values only; every other agent module speaks in these words.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from agent.health.scoring import Verdict
from drivers.types import VoipPath

__all__ = ["Verdict"]  # re-exported: health.scoring owns the verdict vocabulary


class LinkRole(enum.StrEnum):
    PRIMARY = "primary"
    CELLULAR = "cellular"


class Mode(enum.StrEnum):
    """The failover state machine's states (see agent/failover/fsm.py)."""

    PRIMARY = "PRIMARY"  # VoIP on the primary, primary healthy
    DEGRADED = "DEGRADED"  # VoIP on the primary, primary poor; cellular watched
    CELLULAR = "CELLULAR"  # VoIP on LTE
    RECOVERING = "RECOVERING"  # VoIP on LTE, primary healthy again, dwelling before failback
    BOTH_DOWN = "BOTH_DOWN"  # neither link can carry voice
    TEST = "TEST"  # the installer's forced failover

    @property
    def voip_on_cellular(self) -> bool:
        return self in (Mode.CELLULAR, Mode.RECOVERING, Mode.TEST)


class ActionKind(enum.StrEnum):
    SET_PATH = "set_path"
    FLUSH_CONNTRACK = "flush_conntrack"


@dataclass(frozen=True)
class Action:
    kind: ActionKind
    path: VoipPath | None = None


TO_CELLULAR: tuple[Action, ...] = (
    Action(ActionKind.SET_PATH, VoipPath.CELLULAR),
    Action(ActionKind.FLUSH_CONNTRACK),
)
TO_PRIMARY: tuple[Action, ...] = (
    Action(ActionKind.SET_PATH, VoipPath.PRIMARY),
    Action(ActionKind.FLUSH_CONNTRACK),
)


class EventKind(enum.StrEnum):
    FAILOVER = "failover"
    FAILBACK = "failback"
    MODE_CHANGED = "mode_changed"
    BOTH_DOWN = "both_down"
    ROUTER_DRIFT = "router_drift"
    ROUTER_ERROR = "router_error"
    AGENT_STARTED = "agent_started"
    TEST_STARTED = "test_started"
    TEST_FINISHED = "test_finished"


@dataclass(frozen=True)
class Event:
    """A durable fact for the provider: stored first, then reported."""

    kind: EventKind
    wall_time_s: float
    data: dict[str, Any] = field(default_factory=dict)
