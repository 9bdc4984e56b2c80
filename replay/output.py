"""Writing command output without blocking the event loop.

Lines gather in memory and are written by a worker thread in chunks, so a
slow pipe (`llm-replay export | gzip`) slows the command down instead of
freezing its event loop.
"""

from __future__ import annotations

import asyncio
import sys
from typing import TextIO

CHUNK_CHARS = 256 * 1024


class LineWriter:
    """Buffered lines to a text stream (stdout by default), written off the loop."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream
        self._lines: list[str] = []
        self._size = 0

    async def line(self, text: str) -> None:
        """Queue one line; writes when enough has gathered."""
        self._lines.append(text)
        self._size += len(text) + 1
        if self._size >= CHUNK_CHARS:
            await self.flush()

    async def flush(self) -> None:
        """Write and flush everything queued."""
        if not self._lines:
            return
        chunk = "\n".join(self._lines) + "\n"
        self._lines = []
        self._size = 0
        await asyncio.to_thread(self._write, chunk)

    def _write(self, chunk: str) -> None:
        stream = self._stream or sys.stdout
        stream.write(chunk)
        stream.flush()
