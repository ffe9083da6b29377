"""Commands (`cmd/req`) and desired settings (`cfg/des`) from the fleet, and their answers.

Why it is shaped so:

- Only this device's topics reach it (the client subscribes to its own two and drops
  anything else; the broker's ACL refuses the rest). Every request is checked by
  `contract.check_command` before anything runs: too large, not JSON, missing fields,
  expired on arrival, unknown name or bad arguments -> `rejected`, with one sentence.
- Idempotent by id: each id is remembered in SQLite with its latest answer. A request
  seen before (a QoS 1 redelivery, a fleet that retries) gets that answer again and
  runs nothing. Answers wait in the same table until the broker acknowledged them and
  are sent again on the next connection otherwise.
- What a command does to the agent goes through `AgentHooks`, callables the agent
  provides; a missing hook answers `failed: not available in this version`.
- Thresholds (from `set_thresholds` or `cfg/des`) are validated, applied through the
  hook, kept in SQLite (re-applied at the next start) and reported on `cfg/rep`.
  A broken `cfg/des` changes nothing and is reported there with the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from agent.clock import Clock
from agent.domain import Event, EventKind
from agent.store import Store, StoreError
from agent.telemetry import contract
from agent.telemetry.contract import (
    Channel,
    CommandCheck,
    CommandName,
    CommandStatus,
    ReplayEventsArgs,
    ResetMeterArgs,
    RunFailoverTestArgs,
    SetThresholdsArgs,
    Thresholds,
)
from agent.telemetry.mqtt import TelemetryClient

log = logging.getLogger(__name__)

THRESHOLDS_KEY = "telemetry.thresholds"
CFG_VERSION_KEY = "telemetry.cfg_version"
KEEP_COMMAND_IDS = 1000
QUEUE_SIZE = 64
NOT_AVAILABLE = "not available in this version"


class CommandFailed(Exception):
    """A hook could not do what was asked; the message is the one-sentence reason."""


@dataclass
class AgentHooks:
    """What the agent lets the fleet do; each may be None (`failed: not available`)."""

    #: Apply threshold overrides (contract.Thresholds names); return all thresholds now
    #: in force. Raise ValueError or CommandFailed to refuse.
    apply_thresholds: Callable[[dict[str, Any]], Mapping[str, Any]] | None = None
    #: The thresholds in force, for `cfg/rep` (without it: the overrides only).
    current_thresholds: Callable[[], Mapping[str, Any]] | None = None
    #: Reset the LTE meter, with the reason; return what was reset (figures for the fleet).
    reset_meter: Callable[[str], Mapping[str, Any] | Awaitable[Mapping[str, Any]]] | None = None
    #: Run the installer's failover test for `duration_s`; return its report.
    run_failover_test: Callable[[float], Awaitable[Mapping[str, Any]]] | None = None


class CommandHandler:
    """Receives from a TelemetryClient (it registers itself) and answers through it.

    Run `await handler.run(stop)` in a task on the same loop as the client.
    """

    def __init__(
        self,
        client: TelemetryClient,
        store: Store,
        hooks: AgentHooks | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.client = client
        self.store = store
        self.hooks = hooks or AgentHooks()
        self.clock = clock or client.clock
        self._queue: asyncio.Queue[tuple[Channel, bytes]] = asyncio.Queue(QUEUE_SIZE)
        self._test: asyncio.Task[None] | None = None
        #: The last cfg/rep body the broker acknowledged in this process (thrift on LTE).
        self._reported: dict[str, Any] | None = None
        self._rejection: tuple[int | None, str] | None = None
        client.set_message_sink(self.submit)
        client.add_connect_listener(self._on_connected)

    # -- input -------------------------------------------------------------------------

    def submit(self, channel: Channel, payload: bytes, _retain: bool = False) -> None:
        """From the client, on the loop: queue it (a full queue refuses, with a reason)."""
        try:
            self._queue.put_nowait((channel, payload))
        except asyncio.QueueFull:
            if channel is Channel.CMD_REQ:
                check = contract.check_command(payload, self.clock.wall())
                self._answer(check, CommandStatus.REJECTED, reason="the device is busy; retry")

    async def run(self, stop: asyncio.Event) -> None:
        self.restore()
        stopper = asyncio.create_task(stop.wait())
        try:
            while not stop.is_set():
                getter = asyncio.create_task(self._queue.get())
                await asyncio.wait({getter, stopper}, return_when=asyncio.FIRST_COMPLETED)
                if not getter.done():
                    getter.cancel()
                    break
                channel, payload = getter.result()
                try:
                    await self.handle(channel, payload)
                except Exception:
                    log.exception("handling an MQTT %s message failed", channel.value)
        finally:
            stopper.cancel()
            if self._test is not None:
                self._test.cancel()
                await asyncio.gather(self._test, return_exceptions=True)

    def restore(self) -> None:
        """At start: re-apply the thresholds the fleet set before the restart."""
        overrides = self._overrides()
        if overrides and self.hooks.apply_thresholds is not None:
            try:
                self.hooks.apply_thresholds(overrides)
            except Exception as exc:
                log.error("cannot re-apply the fleet's thresholds %s: %s", overrides, exc)

    async def handle(self, channel: Channel, payload: bytes) -> None:
        if channel is Channel.CMD_REQ:
            await self._command(payload)
        elif channel is Channel.CFG_DES:
            self._desired(payload)

    # -- commands ----------------------------------------------------------------------

    async def _command(self, raw: bytes) -> None:
        check = contract.check_command(raw, self.clock.wall())
        if check.id is not None:
            try:
                known = self.store.get_command(check.id)
            except StoreError as exc:
                log.error("cannot read the command log (%s); command %s refused", exc, check.id)
                self._answer(check, CommandStatus.REJECTED, reason="the device cannot record it")
                return
            if known is not None:
                log.info(
                    "command %s seen before (%s): answered again, not run", known.id, known.status
                )
                self._send(known.record, known.id, known.status)
                return
        if check.status is CommandStatus.REJECTED:
            log.warning("command %s rejected: %s", check.id or "(no id)", check.reason)
            self._answer(check, CommandStatus.REJECTED, reason=check.reason)
            return
        self._answer(check, CommandStatus.ACCEPTED)
        await self._run(check)

    async def _run(self, check: CommandCheck) -> None:
        assert check.request is not None and check.args is not None
        if self.clock.wall() > check.request.expires_wall_s:
            self._answer(check, CommandStatus.EXPIRED, reason="expired before it could start")
            return
        name, args = CommandName(str(check.name)), check.args
        try:
            if name is CommandName.RUN_FAILOVER_TEST:
                assert isinstance(args, RunFailoverTestArgs)
                self._start_test(check, args)
                return
            if name is CommandName.SET_THRESHOLDS:
                assert isinstance(args, SetThresholdsArgs)
                result = self._set_thresholds(args.thresholds, f"command {check.id}")
                self._report()
            elif name is CommandName.RESET_METER:
                assert isinstance(args, ResetMeterArgs)
                result = await self._reset_meter(check, args)
            else:
                assert isinstance(args, ReplayEventsArgs)
                result = self._replay(args)
        except CommandFailed as exc:
            self._answer(check, CommandStatus.FAILED, reason=str(exc))
        except Exception as exc:
            log.exception("command %s (%s) failed", check.id, check.name)
            self._answer(check, CommandStatus.FAILED, reason=f"internal error: {exc}")
        else:
            self._answer(check, CommandStatus.SUCCEEDED, result=result)

    def _start_test(self, check: CommandCheck, args: RunFailoverTestArgs) -> None:
        hook = self.hooks.run_failover_test
        if hook is None:
            raise CommandFailed(NOT_AVAILABLE)
        if self._test is not None and not self._test.done():
            raise CommandFailed("a failover test is already running")
        self._log_command(check, {"duration_s": args.duration_s})
        self._answer(check, CommandStatus.IN_PROGRESS)

        async def test() -> None:
            try:
                report = await hook(args.duration_s)
            except CommandFailed as exc:
                self._answer(check, CommandStatus.FAILED, reason=str(exc))
            except Exception as exc:
                log.exception("the failover test failed")
                self._answer(check, CommandStatus.FAILED, reason=f"the test failed: {exc}")
            else:
                self._answer(check, CommandStatus.SUCCEEDED, result=dict(report))

        self._test = asyncio.create_task(test(), name="failover-test")

    async def _reset_meter(self, check: CommandCheck, args: ResetMeterArgs) -> dict[str, Any]:
        hook = self.hooks.reset_meter
        if hook is None:
            raise CommandFailed(NOT_AVAILABLE)
        try:
            outcome = hook(args.reason)
            if inspect.isawaitable(outcome):
                outcome = await outcome
        except ValueError as exc:
            raise CommandFailed(f"the meter refused the reset: {exc}") from exc
        self._log_command(check, {"reason": args.reason})
        return dict(outcome)

    def _replay(self, args: ReplayEventsArgs) -> dict[str, Any]:
        epoch = self.client.outbox.epoch
        if args.epoch is not None and args.epoch != epoch:
            raise CommandFailed(
                f"epoch {args.epoch} is not this device's ({epoch}): those events are gone"
            )
        result = self.client.outbox.replay(args.from_seq)
        self.client.wake()
        return result

    def _log_command(self, check: CommandCheck, data: dict[str, Any]) -> None:
        with contextlib.suppress(StoreError):
            self.store.append_event(
                Event(
                    EventKind.COMMAND,
                    self.clock.wall(),
                    {"name": check.name, "id": check.id, **data},
                )
            )

    # -- answers -------------------------------------------------------------------------

    def _answer(
        self,
        check: CommandCheck,
        status: CommandStatus,
        *,
        reason: str | None = None,
        result: Mapping[str, Any] | None = None,
    ) -> None:
        message = contract.command_result(
            check, status, now_wall_s=self.clock.wall(), reason=reason, result=result
        )
        body = json.loads(message.to_json())
        if message.id is not None:
            try:
                self.store.put_command(
                    message.id, message.name, status.value, body, self.clock.wall()
                )
            except StoreError as exc:
                log.error("cannot record command %s (%s)", message.id, exc)
        self._send(body, message.id, status.value)

    def _send(self, body: dict[str, Any], command_id: str | None, status: str) -> None:
        payload = json.dumps(body, separators=(",", ":")).encode()

        def acknowledged(ok: bool, _reason: str) -> None:
            if ok and command_id is not None:
                with contextlib.suppress(StoreError):
                    self.store.mark_command_reported(command_id, status)

        self.client.publish_reply(Channel.CMD_RES, payload, acknowledged)

    def _on_connected(self) -> None:
        """Answers the broker never acknowledged go again; cfg/rep once per process."""
        try:
            pending = self.store.unreported_commands()
            self.store.prune_commands(KEEP_COMMAND_IDS)
        except StoreError as exc:
            log.error("cannot read the command log (%s)", exc)
            pending = []
        for command in pending:
            self._send(command.record, command.id, command.status)
        self._report()

    # -- thresholds and cfg ------------------------------------------------------------------

    def _overrides(self) -> dict[str, Any]:
        try:
            value = self.store.get(THRESHOLDS_KEY)
        except StoreError:
            return {}
        return dict(value) if isinstance(value, dict) else {}

    def _effective(self) -> dict[str, Any]:
        if self.hooks.current_thresholds is not None:
            try:
                return dict(self.hooks.current_thresholds())
            except Exception:
                log.exception("cannot read the thresholds in force")
        return self._overrides()

    def _set_thresholds(self, thresholds: Thresholds, source: str) -> dict[str, Any]:
        hook = self.hooks.apply_thresholds
        if hook is None:
            raise CommandFailed(NOT_AVAILABLE)
        given = thresholds.given()
        before = self._effective()
        try:
            effective = dict(hook(given))
        except (ValueError, CommandFailed) as exc:
            raise CommandFailed(f"the agent refused the thresholds: {exc}") from exc
        try:
            self.store.put(THRESHOLDS_KEY, {**self._overrides(), **given})
            changed = {k: {"from": before.get(k), "to": v} for k, v in given.items()}
            self.store.append_event(
                Event(
                    EventKind.CONFIG_CHANGED,
                    self.clock.wall(),
                    {"source": source, "changed": changed},
                )
            )
        except StoreError as exc:
            log.error("thresholds applied but not saved (%s); they last until a restart", exc)
        return {"thresholds": effective}

    def _desired(self, raw: bytes) -> None:
        if not raw:
            return  # the fleet cleared its retained desired config: nothing to do
        applied = self._applied_version()
        try:
            desired = contract.check_desired(raw)
        except contract.ContractError as exc:
            log.warning("desired config refused: %s", exc)
            self._rejection = (_salvage_version(raw), str(exc))
            self._report()
            return
        if desired.version <= applied:
            self._report()
            return
        if desired.thresholds.given():
            try:
                self._set_thresholds(desired.thresholds, f"cfg/des v{desired.version}")
            except CommandFailed as exc:
                self._rejection = (desired.version, str(exc))
                self._report()
                return
        with contextlib.suppress(StoreError):
            self.store.put(CFG_VERSION_KEY, desired.version)
        self._rejection = None
        self._report()

    def _applied_version(self) -> int:
        try:
            value = self.store.get(CFG_VERSION_KEY)
        except StoreError:
            return 0
        return value if isinstance(value, int) else 0

    def _report(self) -> None:
        """Publish cfg/rep (retained) unless the broker already holds the same content."""
        rejected, error = self._rejection or (None, None)
        body: dict[str, Any] = {
            "version": self._applied_version(),
            "thresholds": self._effective(),
            "rejected_version": rejected,
            "error": error,
        }
        if body == self._reported:
            return
        message = contract.ReportedConfig(wall_time_s=round(self.clock.wall(), 3), **body)

        def acknowledged(ok: bool, _reason: str) -> None:
            if ok:
                self._reported = body

        self.client.publish_reply(Channel.CFG_REP, message.to_json(), acknowledged)


def _salvage_version(raw: bytes) -> int | None:
    with contextlib.suppress(ValueError, UnicodeDecodeError, AttributeError):
        version = json.loads(raw).get("version")
        if isinstance(version, int) and not isinstance(version, bool):
            return version
    return None
