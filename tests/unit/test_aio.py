"""drivers.aio.wait_for: asyncio.wait_for's contract, minus the cancellation Python 3.11 loses.

Every interleaving is forced with callbacks and events, never timed.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from drivers import aio

WaitFor = Callable[[Awaitable[Any], float | None], Awaitable[Any]]


async def cancel_as_it_completes(wait_for: WaitFor) -> asyncio.Task[Any]:
    """A task waiting (through `wait_for`) on a future that completes in the same instant
    as the task is cancelled: after the result is in, before the task resumes."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[str] = loop.create_future()
    task = asyncio.create_task(wait_for(future, 60.0))  # type: ignore[arg-type]
    await asyncio.sleep(0)  # the task is waiting now
    future.add_done_callback(lambda _: task.cancel())
    future.set_result("read")
    await asyncio.wait({task}, timeout=10)
    return task


async def test_a_cancel_that_lands_as_the_result_comes_is_not_lost() -> None:
    task = await cancel_as_it_completes(aio.wait_for)
    assert task.cancelled(), f"the cancel was lost: {task.result()!r}"


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="3.12 rewrote asyncio.wait_for")
async def test_the_race_above_is_the_one_asyncio_wait_for_loses_on_3_11() -> None:
    # Proof that the test above forces the race: the standard one fails it.
    task = await cancel_as_it_completes(asyncio.wait_for)
    assert not task.cancelled() and task.result() == "read"


async def test_a_result_in_time_is_returned_and_an_error_raised() -> None:
    async def answer() -> str:
        return "ok"

    async def fail() -> str:
        raise ValueError("bad reply")

    assert await aio.wait_for(answer(), 1.0) == "ok"
    assert await aio.wait_for(answer(), None) == "ok"
    with pytest.raises(ValueError, match="bad reply"):
        await aio.wait_for(fail(), 1.0)


async def test_on_timeout_the_awaited_work_is_cancelled_and_over() -> None:
    ended = asyncio.Event()

    async def slow() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            ended.set()

    with pytest.raises(TimeoutError):
        await aio.wait_for(slow(), 0.01)
    assert ended.is_set()  # not running any more when wait_for returns


async def test_a_cancel_cancels_the_awaited_work_and_waits_for_it() -> None:
    started, ended = asyncio.Event(), asyncio.Event()

    async def slow() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        finally:
            await asyncio.sleep(0)  # a wind-down that takes a step
            ended.set()

    task = asyncio.create_task(aio.wait_for(slow(), 60.0))
    await started.wait()
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=10)
    assert done and task.cancelled() and ended.is_set()


async def test_a_second_cancel_while_the_work_winds_down_goes_through() -> None:
    started, winding_down = asyncio.Event(), asyncio.Event()

    async def stubborn() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            winding_down.set()
            await asyncio.Event().wait()  # a wind-down that never ends by itself

    inner: list[asyncio.Task[Any]] = []

    async def waiting() -> None:
        work = asyncio.ensure_future(stubborn())
        inner.append(work)
        await aio.wait_for(work, 60.0)

    task = asyncio.create_task(waiting())
    await started.wait()
    task.cancel()
    await winding_down.wait()
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=10)
    inner[0].cancel()  # leave nothing running
    await asyncio.wait(inner, timeout=10)
    assert done and task.cancelled()
