"""How a streamed answer's bytes are cut into lines and server-sent events.

Lines end at LF (or CR LF) only, as SSE and NDJSON define them. httpx's
`aiter_lines` also ends a line at U+2028, U+2029, U+0085 and a few control
characters, which OpenAI and Ollama send raw inside JSON strings (openai-python
issue #1230): an answer holding one would be cut in two.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator

MAX_LINE_BYTES = 1024 * 1024
"""Longest stream line read; a longer one breaks the stream (a chunk is a few hundred bytes)."""
MAX_TRAILING_LINES = 64
"""Lines read after a stream's final chunk so its connection can be reused; then it is dropped."""


class LineTooLongError(ValueError):
    """A stream line grew past `MAX_LINE_BYTES` before its end arrived."""


class LineSplitter:
    """Bytes in, whole text lines out: a line ends at LF only (a CR before it is dropped).

    Each line is decoded once it is whole, so a character split between two
    reads is read whole; bytes.split keeps the work per chunk, not per byte.
    Invalid UTF-8 is replaced, as SSE decoding does.
    """

    __slots__ = ("_pending", "_pending_bytes", "max_line_bytes")

    def __init__(self, max_line_bytes: int = MAX_LINE_BYTES) -> None:
        self.max_line_bytes = max_line_bytes
        self._pending: list[bytes] = []
        """The start of a line whose end has not arrived yet."""
        self._pending_bytes = 0

    def feed(self, chunk: bytes) -> list[str]:
        """The lines `chunk` completes (LineTooLongError past `max_line_bytes`)."""
        end = chunk.rfind(b"\n")
        if end < 0:
            self._pending.append(chunk)
            self._pending_bytes += len(chunk)
            if self._pending_bytes > self.max_line_bytes:
                raise LineTooLongError(f"a line longer than {self.max_line_bytes} bytes")
            return []
        whole = chunk[:end]
        if self._pending:
            self._pending.append(whole)
            whole = b"".join(self._pending)
        rest = chunk[end + 1 :]
        self._pending = [rest] if rest else []
        self._pending_bytes = len(rest)
        if self._pending_bytes > self.max_line_bytes or (
            len(whole) > self.max_line_bytes
            and max(map(len, whole.split(b"\n"))) > self.max_line_bytes
        ):
            raise LineTooLongError(f"a line longer than {self.max_line_bytes} bytes")
        # One decode for all the complete lines: b"\n" is never part of a UTF-8
        # multi-byte sequence, so this reads each line as decoding it alone would.
        return _lines(whole.decode("utf-8", "replace"))

    def finish(self) -> list[str]:
        """The last line, when the stream ended without its LF."""
        rest = b"".join(self._pending)
        return _lines(rest.decode("utf-8", "replace")) if rest else []


def _lines(text: str) -> list[str]:
    """`text` split at LF, a CR ending a line dropped."""
    lines = text.split("\n")
    return [line.removesuffix("\r") for line in lines] if "\r" in text else lines


async def sse_data(lines: AsyncIterator[str]) -> AsyncGenerator[str, None]:
    """The `data` of each server-sent event (multi-line data joined with newlines);
    comment lines (OpenRouter's keep-alives) and other fields are skipped."""
    data: list[str] = []
    async for line in lines:
        if not line:
            if data:
                yield "\n".join(data)
                data = []
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        if field == "data":
            data.append(value.removeprefix(" "))
    if data:
        yield "\n".join(data)


async def read_out(rest: AsyncIterator[object]) -> None:
    """Read what follows a stream's final chunk, so its connection goes back to the
    pool (a response closed half-read makes httpx drop it); past `MAX_TRAILING_LINES`
    the connection is not worth the wait."""
    count = 0
    async for _ in rest:
        count += 1
        if count > MAX_TRAILING_LINES:
            return
