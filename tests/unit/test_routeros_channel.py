"""The RouterOS control channel: a cancelled command always ends, and ends at once.

A fake session whose commands block until the test answers them (or the session is
aborted) stands in for the router, so every interleaving here is forced, not timed.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from drivers.errors import DriverError, RetryableError
from drivers.router.routeros import parse, transport
from drivers.router.routeros.transport import Channel, Endpoint, Session

EP = Endpoint("192.0.2.1", 8728, "agent", "x", None, timeout_s=0.05)
COMMAND = "/system/resource/print"


class BlockingSession(Session):
    """Commands block until `answer` or `abort`; `running` is set as each one starts."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:  # no librouteros.Api
        self.closed = False
        self.running = asyncio.Event()
        self._loop = loop
        self._answers: queue.Queue[bool] = queue.Queue()

    def answer(self) -> None:
        self._answers.put(True)

    def run(self, command: str, words: Sequence[str]) -> parse.Reply:
        self._loop.call_soon_threadsafe(self.running.set)
        if not self._answers.get() or self.closed:
            raise OSError("the connection was shut down")
        return parse.reply([("!done", ())])

    def stale(self) -> bool:
        return self.closed

    def abort(self) -> None:
        self.closed = True
        self._answers.put(False)


@pytest.fixture
async def channel() -> Any:
    made = Channel(EP, "test", backoff_min_s=0.0, backoff_max_s=0.0)
    made._session = BlockingSession(asyncio.get_running_loop())
    yield made
    await made.close()


def session_of(channel: Channel) -> BlockingSession:
    return channel._session  # type: ignore[return-value]


async def ended(task: asyncio.Task[Any]) -> bool:
    """Whether the task has ended, waiting at most 10 s (it should end at once)."""
    done, _ = await asyncio.wait({task}, timeout=10)
    if not done:  # leave nothing running behind a failed test
        task.cancel()
        await asyncio.wait({task}, timeout=10)
    return bool(done)


def cancel_as_the_worker_finishes(
    monkeypatch: pytest.MonkeyPatch, channel: Channel, task: Callable[[], asyncio.Task[Any]]
) -> None:
    """The cancel comes with the first worker's result: after it is in, before the task
    resumes."""
    loop = asyncio.get_running_loop()
    real = loop.run_in_executor
    armed = True

    def run_in_executor(executor: Any, fn: Callable[..., Any], *args: Any) -> Any:
        nonlocal armed
        future = real(executor, fn, *args)
        if armed and executor is channel._executor:
            armed = False
            future.add_done_callback(lambda _: task().cancel())
        return future

    monkeypatch.setattr(loop, "run_in_executor", run_in_executor)


async def test_a_cancel_that_lands_as_a_command_completes_is_not_lost(
    channel: Channel, monkeypatch: pytest.MonkeyPatch
) -> None:
    # asyncio.wait_for (Python 3.11) returned the reply and dropped the cancel: the
    # agent's loops that poll the router polled on, and the shutdown's gather hung.
    session = session_of(channel)
    replies = 0

    async def poll() -> None:  # as the agent's loops do: a failed read is retried
        nonlocal replies
        while True:
            with contextlib.suppress(DriverError):
                await channel.call(COMMAND, deadline_s=60.0)
                replies += 1

    task = asyncio.create_task(poll())
    cancel_as_the_worker_finishes(monkeypatch, channel, lambda: task)
    await session.running.wait()
    session.answer()
    assert await ended(task), "the cancelled loop kept polling the router"
    assert task.cancelled() and replies == 0
    assert session.closed and not channel.connected  # a cancelled command's session is dropped


async def test_a_cancel_while_a_timed_out_command_winds_down_is_not_lost(
    channel: Channel,
) -> None:
    # The deadline passed, the session is aborted and the worker gets up to 2 s to stop;
    # this one does not (the abort does not reach it). A cancel meanwhile must end the
    # task as cancelled: swallowed, it became the timeout's RetryableError, which the
    # agent's loops catch and carry on from.
    session = session_of(channel)
    aborting = asyncio.Event()
    session.abort = aborting.set  # type: ignore[method-assign]
    task = asyncio.create_task(channel.call(COMMAND, deadline_s=0.05))
    await aborting.wait()  # the task is in the wind-down now
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=1.0)  # well inside the 2 s wind-down
    BlockingSession.abort(session)  # let the worker thread go
    assert done, "the cancel did not end the wind-down"
    assert task.cancelled(), f"the cancel was swallowed: {task.exception()!r}"


async def test_a_login_that_completes_as_the_cancel_lands_is_closed(
    channel: Channel, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The cancel wins, so nobody will hold the session the login made: it is closed.
    channel._session = None
    made = BlockingSession(asyncio.get_running_loop())
    logging_in = asyncio.Event()
    release = queue.Queue[None]()
    loop = asyncio.get_running_loop()

    def login(ep: Endpoint) -> BlockingSession:
        loop.call_soon_threadsafe(logging_in.set)
        release.get()
        return made

    monkeypatch.setattr(transport, "login", login)
    task = asyncio.create_task(channel.call(COMMAND, deadline_s=60.0))
    cancel_as_the_worker_finishes(monkeypatch, channel, lambda: task)
    await logging_in.wait()
    release.put(None)
    assert await ended(task), "the cancel was lost: the command went on after the login"
    assert task.cancelled() and made.closed and channel._session is None


async def test_cancelling_a_blocked_command_aborts_the_session_and_ends(channel: Channel) -> None:
    session = session_of(channel)
    task = asyncio.create_task(channel.call(COMMAND, deadline_s=60.0))
    await session.running.wait()
    task.cancel()
    assert await ended(task)
    assert task.cancelled() and session.closed and not channel.connected


async def test_a_command_that_overruns_its_deadline_drops_the_session(channel: Channel) -> None:
    session = session_of(channel)
    with pytest.raises(RetryableError, match="did not answer"):
        await channel.call(COMMAND, deadline_s=0.05)
    assert session.closed and not channel.connected


async def test_a_command_is_answered(channel: Channel) -> None:
    session = session_of(channel)
    session.answer()
    reply = await channel.call(COMMAND, deadline_s=60.0)
    assert reply.traps == [] and channel.round_trips == 1 and channel.connected
