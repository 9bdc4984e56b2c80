"""`llm-es chat`: talk to a running llm-es from a terminal, one `!chat` request per line.

Each line typed (or piped in) becomes a request on `rosey.command.chat`, the
same request the bot relays for a channel message, and the reply is printed.
Also home of `connect_from_terminal`, the bounded connect the terminal
commands (`chat`, `status`) share.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import os
import stat
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import nats
import nats.errors
import orjson
from nats.aio.client import Client as NATS

from llm_es.config import Config, redact_url
from llm_es.service.commands import COMMAND_SUBJECT
from llm_es.store.connection import DEFAULT_LOCAL_URL, connect

logger = logging.getLogger("llm_es.chat_client")

REPLY_PREFIX = "rosey> "
QUIT_COMMANDS = frozenset({"/quit", "/exit"})
CHAT_PREFIX = "!chat"
NO_ANSWER = f"no llm-es instance answered on {COMMAND_SUBJECT} — is `llm-es serve` running?"
MAX_LINE_BYTES = 1024 * 1024
# An interactive session reads until EOF or /quit; the cap only keeps the loop bounded.
MAX_SESSION_LINES = 10_000_000

CONNECT_ERRORS = (OSError, TimeoutError, nats.errors.Error)
"""What `connect_from_terminal` raises when no server can be reached."""

ReadLine = Callable[[], Awaitable[str]]
"""The next line of input with its newline, or "" at end of input."""


# ------------------------------------------------------------------ connecting


async def connect_from_terminal(config: Config, nats_url: str | None, name: str) -> NATS:
    """Connect for a terminal command: a few quick attempts, no endless reconnecting."""
    url = nats_url or config.nats.url or DEFAULT_LOCAL_URL
    return await connect(config.nats, url, name, keep_reconnecting=False)


def cannot_connect(config: Config, nats_url: str | None, exc: BaseException) -> str:
    """The one-line message for a failed connect."""
    url = nats_url or config.nats.url or DEFAULT_LOCAL_URL
    reason = str(exc) or type(exc).__name__
    return f"llm-es: cannot connect to NATS at {redact_url(url)}: {reason}"


def connected_server(nc: NATS) -> str:
    """`scheme://host:port` of the server the client is connected to."""
    url = nc.connected_url
    if url is None:
        return "?"
    port = f":{url.port}" if url.port else ""
    return f"{url.scheme}://{url.hostname}{port}"


# ------------------------------------------------------------------ input


@contextlib.asynccontextmanager
async def terminal_input() -> AsyncIterator[ReadLine]:
    """Read stdin line by line without blocking the event loop.

    Pipes, sockets and terminals are read through an asyncio pipe transport;
    anything else (a regular file, a replaced `sys.stdin`) from a worker thread.
    """
    loop = asyncio.get_running_loop()
    opened = await _open_pipe_reader(loop)
    if opened is None:

        async def read_in_thread() -> str:
            return await asyncio.to_thread(sys.stdin.readline)

        yield read_in_thread
        return
    reader, transport, restore = opened

    async def read_from_pipe() -> str:
        try:
            line = await reader.readline()
        except ValueError:
            # StreamReader has dropped the over-long line; the session goes on.
            say(f"error: line longer than {MAX_LINE_BYTES} bytes skipped")
            return "" if reader.at_eof() else "\n"
        return line.decode("utf-8", errors="replace")

    try:
        yield read_from_pipe
    finally:
        transport.close()
        restore()


async def _open_pipe_reader(
    loop: asyncio.AbstractEventLoop,
) -> tuple[asyncio.StreamReader, asyncio.BaseTransport, Callable[[], None]] | None:
    try:
        fd = sys.stdin.fileno()
        mode = os.fstat(fd).st_mode
    except (AttributeError, ValueError, OSError):
        return None
    owned = False
    if stat.S_ISCHR(mode) and os.isatty(fd):
        # A terminal's file description is shared with stdout: reading through a
        # fresh one keeps the non-blocking mode the transport sets off stdout.
        with contextlib.suppress(OSError):
            fd = os.open(os.ttyname(fd), os.O_RDONLY | os.O_NOCTTY)
            owned = True
    elif not (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)):
        return None
    was_blocking = os.get_blocking(fd)
    pipe = io.FileIO(fd, "r", closefd=owned)
    reader = asyncio.StreamReader(limit=MAX_LINE_BYTES)
    try:
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), pipe
        )
    except (OSError, ValueError, NotImplementedError):
        pipe.close()
        return None

    def restore() -> None:
        if not owned:
            with contextlib.suppress(OSError):
                os.set_blocking(fd, was_blocking)

    return reader, transport, restore


# ------------------------------------------------------------------ lines and replies


def say(text: str, *, error: bool = False) -> None:
    print(text, file=sys.stderr if error else sys.stdout, flush=True)


def command_args(line: str) -> str | None:
    """The `args` a typed line sends (a leading `!chat` is optional), or None for a blank line."""
    text = line.strip()
    if not text:
        return None
    first, *rest = text.split(maxsplit=1)
    if first == CHAT_PREFIX:
        return rest[0] if rest else ""
    return text


def render_reply(data: bytes) -> str:
    """What to print for a reply: the message for the channel, or `error: ...`."""
    try:
        answer: Any = orjson.loads(data)
    except orjson.JSONDecodeError:
        return "error: unreadable reply from llm-es"
    if not isinstance(answer, dict):
        return "error: unreadable reply from llm-es"
    if answer.get("success") is True:
        result = answer.get("result")
        message = result.get("message") if isinstance(result, dict) else None
        if not isinstance(message, str):
            return "error: reply without a message"
        # Continuation lines line up under the first one, after the prefix.
        return REPLY_PREFIX + message.replace("\n", "\n" + " " * len(REPLY_PREFIX))
    error = answer.get("error")
    return f"error: {error if isinstance(error, str) and error else 'unknown error'}"


# ------------------------------------------------------------------ the session


async def run_chat_client(
    config: Config, nats_url: str | None, channel: str, user: str, reply_timeout: float
) -> int:
    """Run `llm-es chat` until EOF or /quit: 0; 1 when NATS cannot be reached or is lost."""
    try:
        nc = await connect_from_terminal(config, nats_url, "llm-es-chat")
    except CONNECT_ERRORS as exc:
        say(cannot_connect(config, nats_url, exc), error=True)
        return 1
    try:
        say(
            f"llm-es chat: server {connected_server(nc)}, channel {channel}, user {user}"
            " — type !chat help; Ctrl-D to quit"
        )
        async with terminal_input() as read_line:
            return await _converse(nc, read_line, channel, user, reply_timeout)
    finally:
        with contextlib.suppress(nats.errors.Error, OSError):
            await nc.close()


async def _converse(
    nc: NATS, read_line: ReadLine, channel: str, user: str, reply_timeout: float
) -> int:
    for _ in range(MAX_SESSION_LINES):
        line = await read_line()
        if not line:
            return 0
        args = command_args(line)
        if args is None:
            continue
        if args in QUIT_COMMANDS:
            return 0
        payload = orjson.dumps({"channel": channel, "user": user, "args": args})
        try:
            reply = await nc.request(COMMAND_SUBJECT, payload, timeout=reply_timeout)
        except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
            say(NO_ANSWER)
            continue
        except (nats.errors.ConnectionClosedError, nats.errors.StaleConnectionError) as exc:
            say(f"llm-es: lost the connection to NATS: {type(exc).__name__}", error=True)
            return 1
        say(render_reply(reply.data))
    return 0
