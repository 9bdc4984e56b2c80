"""Per-user locks that exist only while someone holds or waits for them.

Admissions of one user are serialized inside a process (the conditional append
keeps them exact across processes; the lock keeps one process's own requests
from racing each other into conflict retries). A lock is dropped when the last
holder or waiter leaves, so the registry holds only users with an admission
under way, and no waiter is ever left on a lock that a newcomer no longer sees.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field


@dataclass(slots=True)
class _Entry:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0
    """Tasks holding or waiting for the lock."""


class UserLocks:
    """One asyncio lock per user, created on first use and dropped when nobody needs it."""

    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}

    @contextlib.asynccontextmanager
    async def hold(self, user: str) -> AsyncIterator[None]:
        """Hold `user`'s lock for the block; waits while another task holds it."""
        # No await between the lookup and the count: no other task can drop the
        # entry in between (one event loop thread).
        entry = self._entries.get(user)
        if entry is None:
            entry = self._entries[user] = _Entry()
        entry.users += 1
        try:
            async with entry.lock:
                yield
        finally:
            # Also on cancellation while waiting: a waiter that gives up leaves too.
            entry.users -= 1
            if entry.users == 0:
                del self._entries[user]

    def __len__(self) -> int:
        """Users with a holder or a waiter now."""
        return len(self._entries)

    def waiting(self, user: str) -> int:
        """Tasks holding or waiting for `user`'s lock (0 when it has none)."""
        entry = self._entries.get(user)
        return entry.users if entry else 0
