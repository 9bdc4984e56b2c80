"""Progress of a long read, on stderr: a bar on a terminal, plain lines otherwise.

A daemon thread draws it from two counters the folding loop updates, so the
loop never writes to the terminal itself and the display stays live even
while the loop is busy.
"""

from __future__ import annotations

import sys
import threading
import time
from types import TracebackType
from typing import Self, TextIO

BAR_WIDTH = 28
TTY_INTERVAL_SECONDS = 0.25
PLAIN_INTERVAL_SECONDS = 5.0


class Progress:
    """`with Progress("rebuild", total) as p: ... p.done = n`; silent when not `enabled`."""

    def __init__(
        self,
        label: str,
        total: int,
        *,
        enabled: bool = True,
        stream: TextIO | None = None,
    ) -> None:
        self.label = label
        self.total = max(total, 0)
        self.done = 0
        self._stream = stream or sys.stderr
        self._enabled = enabled
        self._tty = self._stream.isatty()
        self._interval = TTY_INTERVAL_SECONDS if self._tty else PLAIN_INTERVAL_SECONDS
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._started = time.monotonic()

    def __enter__(self) -> Self:
        self._started = time.monotonic()
        if self._enabled:
            self._thread = threading.Thread(target=self._run, name="replay-progress", daemon=True)
            self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
            if exc_type is None:
                self._draw(final=True)
            elif self._tty:
                self._stream.write("\n")
                self._stream.flush()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self._draw(final=False)

    def render(self, *, final: bool = False) -> str:
        """The current line (without the leading carriage return)."""
        elapsed = max(time.monotonic() - self._started, 1e-9)
        done, total = self.done, self.total
        rate = done / elapsed
        fraction = min(done / total, 1.0) if total else 1.0
        if final:
            return f"{self.label}: {done:,} events in {elapsed:.1f}s ({rate:,.0f} events/s)"
        eta = f"{(total - done) / rate:.0f}s" if rate > 0 and total > done else "-"
        if self._tty:
            filled = int(fraction * BAR_WIDTH)
            bar = "#" * filled + "." * (BAR_WIDTH - filled)
            return (
                f"{self.label} [{bar}] {fraction:4.0%} {done:,}/{total:,} "
                f"{rate:,.0f} events/s ETA {eta}"
            )
        return (
            f"{self.label}: {done:,}/{total:,} events ({fraction:.0%}), "
            f"{rate:,.0f} events/s, eta {eta}"
        )

    def _draw(self, *, final: bool) -> None:
        text = self.render(final=final)
        if self._tty:
            self._stream.write("\r\x1b[2K" + text + ("\n" if final else ""))
        else:
            self._stream.write(text + "\n")
        self._stream.flush()
