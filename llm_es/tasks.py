"""Running each incoming message in its own task, bounded, and draining them at stop.

Also `finish_task`: how a component stops one background task it told to stop.

nats-py calls a subscription's callback for one message at a time; a handler
that awaits a model would hold up every other channel. A TaskPool starts a
task per message (at most `limit` at once: past that, the callback waits,
which pushes back on the subscription) and waits for them at stop.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import Any


class TaskPool:
    """A bounded set of running handler tasks."""

    def __init__(self, limit: int) -> None:
        self._tasks: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(limit)

    async def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Start `work` once a slot is free."""
        await self._slots.acquire()
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._slots.release()

    async def drain(self, grace_seconds: float) -> None:
        """Let running tasks finish within the grace period, then cancel the rest."""
        if not self._tasks:
            return
        _, pending = await asyncio.wait(set(self._tasks), timeout=grace_seconds)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)


async def finish_task(task: asyncio.Task[None] | None, grace_seconds: float) -> None:
    """Wait for a task told to stop to end by itself (at most `grace_seconds`), then cancel it."""
    if task is None or task.done():
        return
    try:
        async with asyncio.timeout(grace_seconds):
            await asyncio.shield(task)
    except TimeoutError:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
