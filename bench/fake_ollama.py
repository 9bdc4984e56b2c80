"""A zero-delay fake Ollama for benchmarks: POST /api/chat (stream=false) and GET /api/tags.

Run as its own process (`python bench/fake_ollama.py --port 0`) so its CPU is
not charged to the plugin or the client. It prints `LISTENING <port>` on
stdout once bound to 127.0.0.1, serves HTTP/1.1 keep-alive with
Content-Length bodies, and exits on SIGTERM/SIGINT or after --max-seconds.
Token counts follow Ollama's fields: `prompt_eval_count` is the number of
whitespace-separated words in the messages, `eval_count` the reply's words.
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
REPLY_WORDS = ("the", "quick", "brown", "fox", "jumps", "over", "the", "lazy", "dog")
REASONS = {200: b"OK", 400: b"Bad Request", 404: b"Not Found", 411: b"Length Required"}


def make_reply(words: int) -> str:
    """A reply of exactly `words` words."""
    return " ".join(REPLY_WORDS[i % len(REPLY_WORDS)] for i in range(words))


def response(status: int, body: bytes, keep_alive: bool) -> bytes:
    head = b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n" % (
        status,
        REASONS.get(status, b"OK"),
        len(body),
    )
    if not keep_alive:
        head += b"Connection: close\r\n"
    return head + b"\r\n" + body


class FakeOllama:
    """Answers the two Ollama endpoints the plugin uses, instantly."""

    def __init__(self, reply_words: int, model: str) -> None:
        self.reply = make_reply(reply_words)
        self.reply_words = reply_words
        self.model = model
        self.chats = 0
        self.tags_body = orjson.dumps({"models": [{"name": f"{model}:latest", "model": model}]})

    def chat(self, body: bytes) -> tuple[int, bytes]:
        try:
            request = orjson.loads(body)
        except orjson.JSONDecodeError:
            return 400, orjson.dumps({"error": "invalid JSON"})
        if not isinstance(request, dict) or not isinstance(request.get("messages"), list):
            return 400, orjson.dumps({"error": "messages must be a list"})
        if request.get("stream", True) is not False:
            return 400, orjson.dumps({"error": "this fake only answers stream=false"})
        prompt_words = sum(
            len(m["content"].split())
            for m in request["messages"]
            if isinstance(m, dict) and isinstance(m.get("content"), str)
        )
        self.chats += 1
        return 200, orjson.dumps(
            {
                "model": request.get("model") or self.model,
                "created_at": "2024-01-01T00:00:00Z",
                "message": {"role": "assistant", "content": self.reply},
                "done": True,
                "done_reason": "stop",
                "prompt_eval_count": prompt_words,
                "eval_count": self.reply_words,
            }
        )

    def route(self, method: bytes, path: bytes, body: bytes) -> tuple[int, bytes]:
        path = path.split(b"?", 1)[0]
        if method == b"POST" and path == b"/api/chat":
            return self.chat(body)
        if method == b"GET" and path == b"/api/tags":
            return 200, self.tags_body
        return 404, orjson.dumps({"error": "not found"})

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
                writer.write(response(status, payload, keep_alive))
                await writer.drain()
                if not keep_alive:
                    return
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            return
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


async def serve(port: int, reply_words: int, model: str, max_seconds: float) -> None:
    app = FakeOllama(reply_words, model)
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
    print(f"fake_ollama chats={app.chats}", file=sys.stderr, flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: a free one)")
    parser.add_argument("--reply-words", type=int, default=20, help="words per reply (20)")
    parser.add_argument("--model", default="llama3.2", help="model name reported (llama3.2)")
    parser.add_argument(
        "--max-seconds", type=float, default=3600.0, help="exit after this long (3600)"
    )
    args = parser.parse_args()
    asyncio.run(serve(args.port, args.reply_words, args.model, args.max_seconds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
