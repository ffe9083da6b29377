"""asyncio helpers for loops that run until cancelled. Standard library only.

Python 3.11's `asyncio.wait_for` can drop a cancellation: if `task.cancel()` lands after
the awaited thing has finished but before the waiting task resumes, wait_for returns the
result and the CancelledError is gone (CPython 3.11 tasks.py, `except CancelledError: if
fut.done(): return fut.result()`; 3.12 rewrote wait_for on asyncio.timeout). A loop that
runs until cancelled then keeps running, and whoever gathers it at shutdown waits for
ever. `wait_for` here has wait_for's contract without that hole: built on asyncio.wait,
which never swallows a cancellation.

Here, beside `types` and `errors`, so that drivers and agent may both use it (drivers
never import agent).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, TypeVar

T = TypeVar("T")


async def wait_for(aw: Awaitable[T], timeout_s: float | None) -> T:
    """`aw`'s result, or TimeoutError after `timeout_s` (None: no limit), like
    asyncio.wait_for: on timeout or cancellation `aw` is cancelled and waited for, so it
    is not running when this returns (wrap it in asyncio.shield to leave it running).

    A cancellation of the caller always raises CancelledError, even when `aw` finished in
    the same instant (its result is then dropped); a second cancellation while `aw` winds
    down goes through too.
    """
    if timeout_s is None:
        return await aw  # a plain await never loses a cancellation
    future = asyncio.ensure_future(aw)
    try:
        done, _ = await asyncio.wait({future}, timeout=max(0.0, timeout_s))
    except asyncio.CancelledError:
        await _cancel_and_wait(future)
        raise
    if done:
        return future.result()
    await _cancel_and_wait(future)
    try:
        return future.result()  # it finished anyway (or ignored the cancel): as wait_for
    except asyncio.CancelledError as exc:
        raise TimeoutError from exc


async def _cancel_and_wait(future: asyncio.Future[Any]) -> None:
    future.cancel()
    # A result or error nobody will read now (the caller left): not worth a log line.
    future.add_done_callback(_consume)
    await asyncio.wait({future})


def _consume(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


__all__ = ["wait_for"]
