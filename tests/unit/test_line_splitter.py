"""How provider streams are cut into lines: at LF only, wherever the reads fall."""

from __future__ import annotations

import itertools

import pytest

from llm_es.providers.framing import MAX_LINE_BYTES, LineSplitter, LineTooLongError

# Unicode line boundaries (which str.splitlines honours) inside lines, a CR LF, an empty
# line, characters of 2, 3 and 4 bytes, and a last line without its LF.
TEXT = "\u00e9\u2028b\r\nc\x85d\x0b\x1c\n\n\U0001f600 \u2029\u2026\nlast"
EXPECTED = ["\u00e9\u2028b", "c\x85d\x0b\x1c", "", "\U0001f600 \u2029\u2026", "last"]


def split(chunks: list[bytes], max_line_bytes: int = MAX_LINE_BYTES) -> list[str]:
    splitter = LineSplitter(max_line_bytes)
    lines = [line for chunk in chunks for line in splitter.feed(chunk)]
    return lines + splitter.finish()


def test_lines_end_at_lf_only_however_the_reads_cut_them() -> None:
    """Every way of cutting the bytes in three reads (through lines, CR LF pairs and
    multi-byte characters) gives the same lines: only LF ends one, a CR before it goes."""
    data = TEXT.encode()
    assert split([data]) == EXPECTED
    for first, second in itertools.combinations(range(len(data) + 1), 2):
        chunks = [data[:first], data[first:second], data[second:]]
        assert split(chunks) == EXPECTED, chunks


def test_invalid_utf8_is_replaced_not_fatal() -> None:
    """A byte that is not UTF-8 reads as U+FFFD, as SSE decoding does; the line stays."""
    assert split([b"ok \xff\n", b"next"]) == ["ok \ufffd", "next"]


@pytest.mark.parametrize(
    "chunks",
    [
        [b"x" * 6, b"x" * 5],  # still no end after 11 bytes
        [b"ab\n" + b"x" * 11],  # the start of the next line is already too long
        [b"x" * 11 + b"\nab"],  # a complete line that is too long
        [b"xxxx", b"x" * 7 + b"\n"],  # one too long once joined
    ],
)
def test_a_line_past_the_bound_is_refused(chunks: list[bytes]) -> None:
    """A line longer than `max_line_bytes` raises, whether its end has arrived or not."""
    with pytest.raises(LineTooLongError):
        split(chunks, max_line_bytes=10)


def test_a_line_at_the_bound_is_read() -> None:
    """Exactly `max_line_bytes` (without its line end) is still a line."""
    assert split([b"x" * 4, b"x" * 6 + b"\n"], max_line_bytes=10) == ["x" * 10]
