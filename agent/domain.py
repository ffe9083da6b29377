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
    # The modem watch (agent/modem/watch.py) and the location guard name these.
    MODEM_UNRESPONSIVE = "modem_unresponsive"
    MODEM_SIM_MISSING = "modem_sim_missing"
    MODEM_RADIO_OFF = "modem_radio_off"
    MODEM_RESET = "modem_reset"
    MODEM_RESET_DEFERRED = "modem_reset_deferred"
    MODEM_RESET_FAILED = "modem_reset_failed"
    MODEM_RECOVERED = "modem_recovered"
    MODEM_NEEDS_ATTENTION = "modem_needs_attention"
    RELOCATED = "relocated"
    RETURNED = "returned"
    FAILOVER = "failover"
    FAILBACK = "failback"
    MODE_CHANGED = "mode_changed"
    BOTH_DOWN = "both_down"
    ROUTER_DRIFT = "router_drift"
    ROUTER_ERROR = "router_error"
    #: Something re-applying would not undo: the SIP helper disabled, a reboot, a rename.
    ROUTER_NOTICE = "router_notice"
    #: The router's serial number changed: swapped or factory-reset equipment.
    ROUTER_TAMPER = "router_tamper"
    AGENT_STARTED = "agent_started"
    TEST_STARTED = "test_started"
    TEST_FINISHED = "test_finished"
    #: The outbox had to drop stored events (bounded size): how many, which seqs.
    EVENTS_DROPPED = "events_dropped"
    #: Remote settings changed (cfg/des or a set_thresholds command): old and new.
    CONFIG_CHANGED = "config_changed"
    #: A command from the fleet that changed something (meter reset, test): who and why.
    COMMAND = "command"
    #: The data meter (agent/meter): 50/75/90/100 % of the cap reached; an overage GB
    #: begun; a new billing cycle (with the last one's summary); the meter reset by a
    #: person (reason); signs that the backup is used as the primary.
    METER_THRESHOLD = "meter_threshold"
    METER_OVERAGE = "meter_overage"
    METER_CYCLE = "meter_cycle"
    METER_RESET = "meter_reset"
    METER_PRIMARY_USE = "meter_primary_use"
    #: A stored row whose kind this version does not know (written by a newer agent);
    #: the store keeps the original name (`StoredEvent.raw_kind`) and reports it as is.
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class Event:
    """A durable fact for the provider: stored first, then reported."""

    kind: EventKind
    wall_time_s: float
    data: dict[str, Any] = field(default_factory=dict)
