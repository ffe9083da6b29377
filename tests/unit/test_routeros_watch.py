"""The carrier watch's stream: a cancelled watch always ends, and ends at once.

A fake session whose reads block until the test hands them a sentence (or the session is
aborted) stands in for the router, so every interleaving here is forced, not timed.
"""

from __future__ import annotations

import asyncio
import queue
from collections.abc import Callable
from typing import Any

import pytest

from drivers.errors import RetryableError
from drivers.router.routeros.transport import Endpoint
from drivers.router.routeros.watch import Stream

EP = Endpoint("192.0.2.1", 8728, "agent", "x", None, timeout_s=0.05)
HANG = ("hang", ())  # wait_readable says yes, then read blocks until the abort
Sentence = tuple[str, tuple[str, ...]]


class BlockingSession:
    """Reads block until `give` or `abort`; `reading` is set each time a read starts."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.closed = False
        self.reading = asyncio.Event()
        self._loop = loop
        self._sentences: queue.Queue[Sentence | None] = queue.Queue()
        self._next: Sentence | None = None
        self._aborted = queue.Queue[None]()

    def give(self, sentence: Sentence) -> None:
        self._sentences.put(sentence)

    def wait_readable(self, idle_s: float) -> bool:
        self._loop.call_soon_threadsafe(self.reading.set)
        try:
            self._next = self._sentences.get(timeout=idle_s)
        except queue.Empty:
            return False
        return True

    def read(self) -> Sentence:
        if self._next == HANG:
            self._aborted.get()
        if self._next is None or self.closed:
            raise OSError("the connection was shut down")
        return self._next

    def abort(self) -> None:
        self.closed = True
        self._sentences.put(None)
        self._aborted.put(None)


@pytest.fixture
async def stream() -> Any:
    made = Stream(EP)
    made._session = BlockingSession(asyncio.get_running_loop())  # type: ignore[assignment]
    yield made
    await made.close()


def session_of(stream: Stream) -> BlockingSession:
    return stream._session  # type: ignore[return-value]


async def ended(task: asyncio.Task[Any]) -> bool:
    """Whether the task has ended, waiting at most 10 s (it should end at once)."""
    done, _ = await asyncio.wait({task}, timeout=10)
    if not done:  # leave nothing running behind a failed test
        task.cancel()
        await asyncio.wait({task}, timeout=10)
    return bool(done)


async def test_a_cancel_that_lands_as_a_read_completes_is_not_lost(
    stream: Stream, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The CI hang: the cancel arrives after the worker's sentence is in but before the
    # watch resumes. asyncio.wait_for (Python 3.11) then returned the sentence and dropped
    # the cancel, and the watch read on for ever.
    loop = asyncio.get_running_loop()
    session = session_of(stream)
    reads = 0

    async def watch() -> None:
        nonlocal reads
        while True:
            await stream.next(60.0)
            reads += 1

    task = asyncio.create_task(watch())
    real = loop.run_in_executor

    def run_in_executor(executor: Any, fn: Callable[..., Any], *args: Any) -> Any:
        future = real(executor, fn, *args)
        if executor is stream._executor:  # the cancel comes with the read's result
            future.add_done_callback(lambda _: task.cancel())
        return future

    monkeypatch.setattr(loop, "run_in_executor", run_in_executor)
    await session.reading.wait()
    session.give(("!re", (".tag=listen", "=.id=*1", "=running=false")))
    assert await ended(task), "the cancelled watch kept reading"
    assert task.cancelled() and reads == 0
    assert session.closed  # the session a cancelled read leaves is never reused


async def test_cancelling_a_blocked_read_aborts_the_session_and_ends(stream: Stream) -> None:
    session = session_of(stream)
    task = asyncio.create_task(stream.next(60.0))
    await session.reading.wait()
    task.cancel()
    assert await ended(task)
    assert task.cancelled() and session.closed


async def test_a_second_cancel_while_the_worker_winds_down_goes_through(stream: Stream) -> None:
    # The first cancel aborts the session and gives the worker up to 2 s to stop; this
    # worker never stops (the abort does not reach it). A second cancel must end the
    # wait at once, not be swallowed by it.
    session = session_of(stream)
    aborting = asyncio.Event()
    session.abort = aborting.set  # type: ignore[method-assign]
    session.give(HANG)
    task = asyncio.create_task(stream.next(60.0))
    await session.reading.wait()
    task.cancel()
    await aborting.wait()  # the task is in the wind-down now
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=1.0)  # well inside the 2 s wind-down
    BlockingSession.abort(session)  # let the worker thread go
    assert done and task.cancelled()


async def test_a_read_that_overruns_its_deadline_reconnects(stream: Stream) -> None:
    session = session_of(stream)
    session.give(HANG)
    with pytest.raises(RetryableError, match="stopped in the middle of a reply"):
        await stream.next(0.05)
    assert session.closed


async def test_a_sentence_is_read(stream: Stream) -> None:
    session_of(stream).give(("!re", (".tag=listen", "=.id=*1", "=running=false")))
    assert await stream.next(60.0) == ("!re", "listen", {".id": "*1", "running": "false"})
    assert await stream.next(0.01) is None  # idle: no sentence, no error
