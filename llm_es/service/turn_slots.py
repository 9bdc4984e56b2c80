"""A fair share of the provider connections: how many turns one channel runs here at once.

Provider calls share one connection pool per provider; without a cap, one
channel's hung calls could take every connection and make every other
channel's turns wait for one and fail. A turn over its channel's cap is
refused at once with a clear reply, before admission, so it appends nothing
and reserves nothing. Counted per instance: each instance guards its own pool.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator


class TurnSlots:
    """Turns running here per channel (or, for a request without a channel, per user)."""

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        """Most turns one channel runs at once; None: no cap."""
        self._running: Counter[str] = Counter()

    @contextlib.contextmanager
    def take(self, key: str) -> Iterator[bool]:
        """Whether `key` had a slot free; a slot taken is held until the block ends."""
        if self.limit is not None and self._running[key] >= self.limit:
            yield False
            return
        self._running[key] += 1
        try:
            yield True
        finally:
            self._running -= Counter((key,))  # in place; drops the key at zero

    def running(self, key: str) -> int:
        """Turns `key` runs here now."""
        return self._running[key]
