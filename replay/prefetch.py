"""Reading a range of the log in a child process, so that reading and folding use two cores.

Reading costs about 9 µs of CPU an event on nats-py's public client, folding
about 11 µs; in one process they share a core.
`read_in_child` spawns a daemon process that connects the way the command did
(`ConnectRecipe`), reads the selection with `EventLog.read` and sends each
batch down a one-way pipe as one frame; the parent only splits frames back
into `RawEvent`s (well under 1 µs an event). The pipe is the backpressure: a
child that is ahead of the parent blocks in its send.

Frames are `Connection.send_bytes` messages: a length (i32, big-endian; for a body
over 2 GiB, -1 then a u64) and a body; a body starts with a tag byte:

    B  a batch: the count n (u32), n sequences (i64), n append times (i64, ns),
       n payload sizes (u32),
       n subject sizes (u32), the subjects (UTF-8), then the payloads
    E  the end of the selection
    X  the read failed: the reason (UTF-8), raised in the parent as LogUnavailable
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import multiprocessing
import signal
import struct
import sys
import threading
from array import array
from collections.abc import AsyncGenerator, Sequence
from contextlib import aclosing
from itertools import accumulate, pairwise
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import TYPE_CHECKING

import nats.errors

from llm_es.config import Config
from llm_es.errors import ConfigError
from llm_es.logs import configure_logging
from llm_es.store.log import STREAM_NAME
from replay.connecting import ConnectRecipe, connect
from replay.errors import LogUnavailable, ReplayError

if sys.platform == "linux":
    import fcntl

if TYPE_CHECKING:
    from replay.reading import LogSelection, RawEvent

BATCH = b"B"
END = b"E"
FAILED = b"X"
_BATCH_HEAD = struct.Struct("<cI")
_LENGTH = struct.Struct("!i")
_LONG_LENGTH = struct.Struct("!Q")
"""The length after a -1, for a body over 2 GiB: a batch of `BATCH_SIZE` (1000) events is
that big only where the server's `max_payload` is raised past 2 MiB, but then it can be."""

STARTUP_SECONDS = 60.0
"""Added to the idle timeout for the first frame: process start, imports, reading the
config, connecting (at most `INITIAL_CONNECT_SECONDS`) and creating the consumer."""
REPORT_SECONDS = 5.0
"""Added to the idle timeout for later frames, so that the child's own, more precise
timeout message ("the event log stopped answering ...") arrives first."""
STOP_SECONDS = 5.0
"""How long a child may take to exit (after its end, or once told to stop) before it is killed."""
PIPE_BYTES = 1 << 20
"""Pipe buffer asked of Linux (default 64 KiB, less than one batch): the child runs a few
batches ahead without waiting for the parent to drain its frame."""
MAX_FRAMES = 10**9
"""Bound of the receiving loop: more batches than any log holds."""


def encode_batch(batch: Sequence[RawEvent]) -> bytes:
    """One `B` frame for a batch of `(seq, subject, data, stored_ns)`."""
    subjects = [subject.encode() for _, subject, _, _ in batch]
    payloads = [data for _, _, data, _ in batch]
    return b"".join(
        [
            _BATCH_HEAD.pack(BATCH, len(batch)),
            array("q", [seq for seq, _, _, _ in batch]).tobytes(),
            array("q", [stored_ns for _, _, _, stored_ns in batch]).tobytes(),
            array("I", map(len, payloads)).tobytes(),
            array("I", map(len, subjects)).tobytes(),
            *subjects,
            *payloads,
        ]
    )


def decode_batch(frame: bytes) -> list[RawEvent]:
    """The batch a `B` frame carries, as `(seq, subject, data, stored_ns)` tuples."""
    _, count = _BATCH_HEAD.unpack_from(frame)
    offset = _BATCH_HEAD.size
    seqs, times, sizes, subject_sizes = array("q"), array("q"), array("I"), array("I")
    for numbers in (seqs, times, sizes, subject_sizes):
        numbers.frombytes(frame[offset : offset + numbers.itemsize * count])
        offset += numbers.itemsize * count
    subject_ends = list(accumulate(subject_sizes, initial=offset))
    payload_ends = list(accumulate(sizes, initial=subject_ends[-1]))
    text = frame[offset : subject_ends[-1]].decode()
    if len(text) == subject_ends[-1] - offset:
        # ASCII (every subject the plugin writes): slices of one decoded text.
        subjects = [text[start - offset : end - offset] for start, end in pairwise(subject_ends)]
    else:
        subjects = [frame[start:end].decode() for start, end in pairwise(subject_ends)]
    payloads = [frame[start:end] for start, end in pairwise(payload_ends)]
    return list(zip(seqs, subjects, payloads, times, strict=True))


async def read_in_child(
    recipe: ConnectRecipe,
    selection: LogSelection,
    *,
    stream: str = STREAM_NAME,
    batch_size: int,
    idle_timeout: float,
    meanwhile: AsyncGenerator[list[RawEvent], None] | None = None,
) -> AsyncGenerator[list[RawEvent], None]:
    """Yield the selected events in batches, read by a child process; like `EventLog.read`.

    The batches are the ones `EventLog.read` yields in the child. A failure
    there (no server, no log, a timeout) is raised here as LogUnavailable with
    the child's message. `meanwhile`'s batches (the events before the
    selection, read in this process) come first, while the child starts. Use
    it under `contextlib.aclosing`: closing it early, or cancelling the caller,
    stops the child and waits for it (bounded).
    """
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    child = context.Process(
        target=_read_into_pipe,
        args=(sender, recipe, selection, stream, batch_size, idle_timeout, _log_levels()),
        name="llm-replay-reader",
        daemon=True,
    )
    transport: asyncio.ReadTransport | None = None
    try:
        _widen_pipe(receiver)
        await _start(child, sender)
        # The pipe is read by the event loop (non-blocking); the Connection only carried
        # the file descriptor to the child and closes it at the end (so `closefd=False`).
        reader = asyncio.StreamReader(limit=PIPE_BYTES)
        transport, _ = await asyncio.get_running_loop().connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader),
            io.FileIO(receiver.fileno(), "r", closefd=False),
        )
        if meanwhile is not None:
            async with aclosing(meanwhile) as batches:
                async for batch in batches:
                    yield batch
        wait = STARTUP_SECONDS + idle_timeout
        last_seq = 0
        for _ in range(MAX_FRAMES):
            try:
                async with asyncio.timeout(wait):
                    (size,) = _LENGTH.unpack(await reader.readexactly(_LENGTH.size))
                    if size == -1:
                        (size,) = _LONG_LENGTH.unpack(await reader.readexactly(_LONG_LENGTH.size))
                    frame = await reader.readexactly(size)
            except asyncio.IncompleteReadError:
                await _stop(child, grace=STOP_SECONDS)
                raise LogUnavailable(
                    f"the log reader process stopped (exit code {child.exitcode}) "
                    f"after sequence {last_seq}"
                ) from None
            except TimeoutError:
                raise LogUnavailable(
                    f"the log reader process stopped answering (nothing for {wait:g}s "
                    f"after sequence {last_seq})"
                ) from None
            tag = frame[:1]
            if tag == BATCH:
                batch = decode_batch(frame)
                if batch:
                    last_seq = batch[-1][0]
                    yield batch
                wait = idle_timeout + REPORT_SECONDS
            elif tag == END:
                await _stop(child, grace=STOP_SECONDS)
                return
            elif tag == FAILED:
                raise LogUnavailable(frame[1:].decode("utf-8", "replace"))
            else:
                raise LogUnavailable(f"the log reader process sent an unknown frame {tag!r}")
    finally:
        if meanwhile is not None:
            await meanwhile.aclose()  # no-op once read; never started if the child was not
        if transport is not None:
            transport.close()
        await _stop(child)
        receiver.close()


async def _start(child: BaseProcess, sender: Connection) -> None:
    """Start the child, then close this process's copy of the child's end of the pipe (so
    that the child's exit reads as EOF here).

    The child starts with SIGINT ignored, as it inherits it: a Ctrl-C reaches the whole
    process group, and this process handles it (and stops the child); a child that took
    it while importing would print a traceback. In the few milliseconds of the start (in
    a thread: spawning writes the child's arguments down a pipe) this process ignores it too.
    """
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if in_main_thread else None
    starting = asyncio.ensure_future(asyncio.to_thread(child.start))
    try:
        await asyncio.shield(starting)
    finally:
        # Even when cancelled: `sender` is closed only once the start has handed it over.
        await asyncio.wait([starting], timeout=STOP_SECONDS)
        if starting.done() and not starting.cancelled():
            starting.exception()  # raised above unless cancelled; seen either way
        if in_main_thread:
            signal.signal(signal.SIGINT, previous)
        sender.close()


def _widen_pipe(receiver: Connection) -> None:
    """Ask for a bigger pipe buffer (Linux only; the default works, only slower)."""
    if sys.platform == "linux":
        with contextlib.suppress(OSError):
            fcntl.fcntl(receiver.fileno(), fcntl.F_SETPIPE_SZ, PIPE_BYTES)


async def _stop(child: BaseProcess, *, grace: float = 0.0) -> None:
    """Let the child exit within `grace` seconds, else stop it; bounded either way."""
    if child.pid is None:
        return  # never started
    if grace > 0 and child.exitcode is None:
        await asyncio.to_thread(child.join, grace)
    if child.exitcode is None:
        child.terminate()
        await asyncio.to_thread(child.join, STOP_SECONDS)
    if child.exitcode is None:
        child.kill()
        await asyncio.to_thread(child.join, STOP_SECONDS)


def _log_levels() -> tuple[str, str]:
    """The parent's log levels (root, and `llm_es.nats`), for the child to log alike."""
    nats_level = logging.getLogger("llm_es.nats").level
    root_level = logging.getLogger().getEffectiveLevel()
    return logging.getLevelName(root_level), logging.getLevelName(nats_level)


# ------------------------------------------------------------------ in the child


def _read_into_pipe(
    sender: Connection,
    recipe: ConnectRecipe,
    selection: LogSelection,
    stream: str,
    batch_size: int,
    idle_timeout: float,
    log_levels: tuple[str, str],
) -> None:
    """The child's main: read the selection, send it frame by frame, then `E` (or `X`)."""
    # Already so when started from a main thread (`_start`): Ctrl-C is the parent's to handle.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    root_level, nats_level = log_levels
    configure_logging(root_level)
    logging.getLogger("llm_es.nats").setLevel(nats_level)
    try:
        config = recipe.load_config()
        asyncio.run(
            _send_selection(sender, config, recipe, selection, stream, batch_size, idle_timeout)
        )
    except (BrokenPipeError, ConnectionResetError):
        return  # the parent stopped reading: nobody to tell
    except (ReplayError, ConfigError) as exc:
        _send_failure(sender, str(exc))
    except (nats.errors.Error, TimeoutError) as exc:
        _send_failure(sender, f"NATS failed: {type(exc).__name__}: {exc}")
    except Exception as exc:
        _send_failure(sender, f"the log reader process failed: {type(exc).__name__}: {exc}")
    finally:
        sender.close()


async def _send_selection(
    sender: Connection,
    config: Config,
    recipe: ConnectRecipe,
    selection: LogSelection,
    stream: str,
    batch_size: int,
    idle_timeout: float,
) -> None:
    # Imported here: `replay.reading` hands long reads to this module.
    from replay.reading import EventLog

    nc = await connect(config, recipe)
    try:
        log = EventLog(nc, stream=stream)
        read = log.read(selection, batch_size=batch_size, idle_timeout=idle_timeout)
        async with aclosing(read) as batches:
            async for batch in batches:
                # In a thread: while the parent drains the pipe, this loop keeps reading NATS.
                await asyncio.to_thread(sender.send_bytes, encode_batch(batch))
    finally:
        with contextlib.suppress(nats.errors.Error, OSError):
            await nc.close()
    await asyncio.to_thread(sender.send_bytes, END)


def _send_failure(sender: Connection, reason: str) -> None:
    with contextlib.suppress(OSError):
        sender.send_bytes(FAILED + reason.encode("utf-8", "replace"))
