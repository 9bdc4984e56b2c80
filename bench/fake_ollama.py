"""A zero-delay fake Ollama for benchmarks: POST /api/chat (plain or streamed) and GET /api/tags.

Run as its own process (`python bench/fake_ollama.py --port 0`) so its CPU is
not charged to the plugin or the client. It prints `LISTENING <port>` on
stdout once bound to 127.0.0.1, serves HTTP/1.1 keep-alive, and exits on
SIGTERM/SIGINT or after --max-seconds. `"stream": false` gets one JSON body
with Content-Length; a streamed chat (`stream` true or absent, as in Ollama)
gets NDJSON with Transfer-Encoding: chunked, one word per line and HTTP chunk
(the first at once, then one every --chunk-delay-ms), then the `done` line
with the usage. Token counts follow Ollama's fields: `prompt_eval_count` is
the number of whitespace-separated words in the messages, `eval_count` the
reply's words.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys

import orjson

MAX_HEADER_BYTES = 64 * 1024
MAX_BODY_BYTES = 16 * 1024 * 1024
MAX_HEADER_LINES = 100
CREATED_AT = "2024-01-01T00:00:00Z"
REPLY_WORDS = ("the", "quick", "brown", "fox", "jumps", "over", "the", "lazy", "dog")
REASONS = {200: b"OK", 400: b"Bad Request", 404: b"Not Found", 411: b"Length Required"}
JSON_TYPE = b"application/json"
NDJSON_TYPE = b"application/x-ndjson"

Answer = tuple[int, bytes | list[bytes]]
"""Status and either one body or the lines of a streamed body."""


def make_reply(words: int) -> str:
    """A reply of exactly `words` words."""
    return " ".join(REPLY_WORDS[i % len(REPLY_WORDS)] for i in range(words))


def reply_pieces(reply: str) -> list[str]:
    """The reply word by word, each with its trailing space, so the pieces join back to it."""
    words = reply.split(" ")
    return [f"{word} " for word in words[:-1]] + words[-1:]


def response(status: int, body: bytes, keep_alive: bool) -> bytes:
    head = b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n" % (
        status,
        REASONS.get(status, b"OK"),
        JSON_TYPE,
        len(body),
    )
    if not keep_alive:
        head += b"Connection: close\r\n"
    return head + b"\r\n" + body


def streamed_head(keep_alive: bool) -> bytes:
    head = (
        b"HTTP/1.1 200 OK\r\nContent-Type: " + NDJSON_TYPE + b"\r\nTransfer-Encoding: chunked\r\n"
    )
    if not keep_alive:
        head += b"Connection: close\r\n"
    return head + b"\r\n"


def http_chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


class FakeOllama:
    """Answers the two Ollama endpoints the plugin uses, instantly (streams: word by word)."""

    def __init__(self, reply_words: int, model: str, chunk_delay: float = 0.0) -> None:
        self.reply = make_reply(reply_words)
        self.pieces = reply_pieces(self.reply)
        self.reply_words = reply_words
        self.model = model
        self.chunk_delay = chunk_delay
        self.chats = 0
        self.streamed_chats = 0
        self.tags_body = orjson.dumps({"models": [{"name": f"{model}:latest", "model": model}]})

    def chat(self, body: bytes) -> Answer:
        try:
            request = orjson.loads(body)
        except orjson.JSONDecodeError:
            return 400, orjson.dumps({"error": "invalid JSON"})
        if not isinstance(request, dict) or not isinstance(request.get("messages"), list):
            return 400, orjson.dumps({"error": "messages must be a list"})
        prompt_words = sum(
            len(m["content"].split())
            for m in request["messages"]
            if isinstance(m, dict) and isinstance(m.get("content"), str)
        )
        header = {"model": request.get("model") or self.model, "created_at": CREATED_AT}
        done = {
            **header,
            "message": {"role": "assistant", "content": self.reply},
            "done": True,
            "done_reason": "stop",
            "prompt_eval_count": prompt_words,
            "eval_count": self.reply_words,
        }
        self.chats += 1
        if request.get("stream", True) is False:
            return 200, orjson.dumps(done)
        # Ollama streams unless told not to: one line per piece, then the usage line.
        self.streamed_chats += 1
        lines = [
            orjson.dumps({**header, "message": {"role": "assistant", "content": piece}}) + b"\n"
            for piece in self.pieces
        ]
        lines.append(orjson.dumps({**done, "message": {"role": "assistant", "content": ""}}))
        return 200, lines

    def route(self, method: bytes, path: bytes, body: bytes) -> Answer:
        path = path.split(b"?", 1)[0]
        if method == b"POST" and path == b"/api/chat":
            return self.chat(body)
        if method == b"GET" and path == b"/api/tags":
            return 200, self.tags_body
        return 404, orjson.dumps({"error": "not found"})

    async def stream(
        self, writer: asyncio.StreamWriter, lines: list[bytes], keep_alive: bool
    ) -> None:
        """Send NDJSON lines one HTTP chunk each, flushed one by one (a token stream)."""
        writer.write(streamed_head(keep_alive) + http_chunk(lines[0]))
        await writer.drain()
        for line in lines[1:]:
            if self.chunk_delay > 0:
                await asyncio.sleep(self.chunk_delay)
            writer.write(http_chunk(line))
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        await writer.drain()

    async def serve_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            # One request per iteration; a keep-alive connection ends when the client closes.
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                    return
                lines = head.split(b"\r\n")
                method, path, version = [*lines[0].split(b" ", 2), b"", b""][:3]
                length = None
                keep_alive = version == b"HTTP/1.1"
                for line in lines[1:MAX_HEADER_LINES]:
                    name, _, value = line.partition(b":")
                    name = name.strip().lower()
                    if name == b"content-length":
                        length = int(value.strip())
                    elif name == b"connection":
                        keep_alive = value.strip().lower() != b"close"
                    elif name == b"transfer-encoding":
                        length = -1
                if method == b"POST" and (length is None or length < 0 or length > MAX_BODY_BYTES):
                    writer.write(response(411, b'{"error":"Content-Length required"}', False))
                    await writer.drain()
                    return
                body = await reader.readexactly(length) if length else b""
                status, payload = self.route(method, path, body)
                if isinstance(payload, bytes):
                    writer.write(response(status, payload, keep_alive))
                    await writer.drain()
                else:
                    await self.stream(writer, payload, keep_alive)
                if not keep_alive:
                    return
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            return
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


async def serve(
    port: int, reply_words: int, model: str, max_seconds: float, chunk_delay: float
) -> None:
    app = FakeOllama(reply_words, model, chunk_delay)
    server = await asyncio.start_server(
        app.serve_connection, "127.0.0.1", port, limit=MAX_HEADER_BYTES
    )
    bound = server.sockets[0].getsockname()[1]
    print(f"LISTENING {bound}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max_seconds):
                await stop.wait()
    print(
        f"fake_ollama chats={app.chats} streamed={app.streamed_chats}", file=sys.stderr, flush=True
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: a free one)")
    parser.add_argument("--reply-words", type=int, default=20, help="words per reply (20)")
    parser.add_argument("--model", default="llama3.2", help="model name reported (llama3.2)")
    parser.add_argument(
        "--chunk-delay-ms",
        type=float,
        default=0.0,
        help="pause between the lines of a streamed answer, not before the first (0)",
    )
    parser.add_argument(
        "--max-seconds", type=float, default=3600.0, help="exit after this long (3600)"
    )
    args = parser.parse_args()
    if args.reply_words < 1 or args.chunk_delay_ms < 0:
        parser.error("--reply-words must be positive and --chunk-delay-ms not negative")
    asyncio.run(
        serve(args.port, args.reply_words, args.model, args.max_seconds, args.chunk_delay_ms / 1000)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
