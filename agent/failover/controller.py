"""Applies the state machine's actions through the router driver and reads them back.

The shell around `fsm.step`: it owns the I/O (router, store, clock) so the table can
stay pure. Every path change is verified by reading the router's state back; a
change that does not show up is retried, then reported as an error event.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass

from agent.clock import Clock
from agent.domain import Action, ActionKind, Event, EventKind, Mode
from agent.failover.fsm import FsmConfig, FsmState, Observation, Step, resume, step
from agent.store import Store
from drivers.errors import DriverError
from drivers.router.base import RouterDriver
from drivers.types import VoipPath

log = logging.getLogger(__name__)

MODE_KEY = "failover.mode"
APPLY_ATTEMPTS = 3


@dataclass(frozen=True)
class Transition:
    from_mode: Mode
    to_mode: Mode
    reason: str
    #: Seconds from the decision to the verified path change on the router.
    switch_s: float
    conntrack_flushed: int


class FailoverController:
    def __init__(
        self,
        router: RouterDriver,
        store: Store,
        clock: Clock,
        config: FsmConfig,
    ) -> None:
        self.router = router
        self.store = store
        self.clock = clock
        self.config = config
        self.state = FsmState(since_s=clock.monotonic())
        self.cellular_since_wall_s: float | None = None
        #: Held while the router's path is being changed; others reading it back take it too.
        self.lock = asyncio.Lock()

    async def resume(self) -> None:
        """After a restart or power loss: resume the persisted mode and re-apply its path."""
        saved = self.store.get(MODE_KEY) or {}
        mode = Mode(saved.get("mode", Mode.PRIMARY.value))
        path = VoipPath(saved.get("path", VoipPath.PRIMARY.value))
        self.cellular_since_wall_s = saved.get("cellular_since_wall_s")
        self.state = resume(mode, path, self.clock.monotonic())
        async with self.lock:
            await self._set_path_verified(self.state.path)
        self._persist()
        if mode is not self.state.mode:
            log.info("resumed %s as %s", mode.value, self.state.mode.value)

    async def observe(
        self, obs: Observation, evidence: Mapping[str, object] | None = None
    ) -> Transition | None:
        """Feed one observation; apply and report a transition if the table says so.

        `evidence` (each link's verdict and figures) goes into the transition's events,
        so the provider sees why the site moved, not only that it did.
        """
        async with self.lock:
            decided_s = self.clock.monotonic()
            result = step(self.state, obs, decided_s, self.config)
            if result.reason is None:
                self.state = result.state
                return None
            return await self._apply(result, decided_s, evidence or {})

    async def _apply(
        self, result: Step, decided_s: float, evidence: Mapping[str, object]
    ) -> Transition:
        before = self.state
        flushed = 0
        for action in result.actions:
            flushed += await self._do(action)
        self.state = result.state
        switch_s = self.clock.monotonic() - decided_s
        transition = Transition(
            before.mode, result.state.mode, result.reason or "", switch_s, flushed
        )
        self._record(before, transition, evidence)
        self._persist()
        return transition

    async def _do(self, action: Action) -> int:
        if action.kind is ActionKind.SET_PATH and action.path is not None:
            await self._set_path_verified(action.path)
            return 0
        if action.kind is ActionKind.FLUSH_CONNTRACK:
            try:
                return await self.router.flush_voip_conntrack()
            except DriverError as exc:
                # Not fatal: phones re-register by themselves, only slower.
                self._event(
                    EventKind.ROUTER_ERROR, {"action": "flush_conntrack", "error": str(exc)}
                )
        return 0

    async def _set_path_verified(self, path: VoipPath) -> None:
        last_error: str = ""
        for _attempt in range(APPLY_ATTEMPTS):
            try:
                await self.router.set_voip_path(path)
                state = await self.router.read_state()
                if state.voip_path is path:
                    return
                last_error = f"router reports VoIP path {state.voip_path}, wanted {path.value}"
            except DriverError as exc:
                last_error = str(exc)
        self._event(
            EventKind.ROUTER_ERROR, {"action": f"set_path {path.value}", "error": last_error}
        )
        raise PathNotAppliedError(
            f"the router did not take the VoIP path {path.value} ({last_error})"
        )

    def _record(self, before: FsmState, t: Transition, evidence: Mapping[str, object]) -> None:
        now_wall = self.clock.wall()
        data = {
            **evidence,
            "from": t.from_mode.value,
            "to": t.to_mode.value,
            "reason": t.reason,
            "switch_ms": round(t.switch_s * 1000, 1),
            "conntrack_flushed": t.conntrack_flushed,
        }
        self._event(EventKind.MODE_CHANGED, data)
        went_cellular = before.path is VoipPath.PRIMARY and self.state.path is VoipPath.CELLULAR
        came_back = before.path is VoipPath.CELLULAR and self.state.path is VoipPath.PRIMARY
        if went_cellular and t.to_mode is not Mode.TEST:
            self.cellular_since_wall_s = now_wall
            self._event(EventKind.FAILOVER, data)
        elif came_back and t.from_mode is not Mode.TEST:
            outage_s = None
            if self.cellular_since_wall_s is not None:
                outage_s = round(now_wall - self.cellular_since_wall_s, 1)
            self.cellular_since_wall_s = None
            self._event(EventKind.FAILBACK, {**data, "on_cellular_s": outage_s})
        if t.to_mode is Mode.BOTH_DOWN:
            self._event(EventKind.BOTH_DOWN, data)

    def _event(self, kind: EventKind, data: Mapping[str, object]) -> None:
        self.store.append_event(Event(kind, self.clock.wall(), dict(data)))
        log.info("event %s %s", kind.value, data)

    def _persist(self) -> None:
        self.store.put(
            MODE_KEY,
            {
                "mode": self.state.mode.value,
                "path": self.state.path.value,
                "cellular_since_wall_s": self.cellular_since_wall_s,
            },
        )


class PathNotAppliedError(DriverError):
    remedy = "Check the router (cpe-agent status shows its drift); the agent keeps retrying."
