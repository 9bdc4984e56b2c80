"""Fake LLM provider for tests and benchmarks: a real HTTP/1.1 server on 127.0.0.1.

`FakeLLMServer` speaks the Ollama (`/api/chat`, `/api/generate`, `/api/tags`) and
OpenAI/OpenRouter (`/v1/chat/completions`, `/v1/models`) wire formats, streaming
included, and records every request. Knobs a test may set at any time shape the
next answers: latency (`delay`, `hold`, `hold_if`, `chunk_delay`, `first_chunk_delay`), failures
(`fail_status`, `fail_times`, `retry_after`, `fail_in_body`), token usage (`usage`, `omit_usage`,
`openrouter_cost`) and the bytes on the wire (`write_size`, `raw_answer`). Pure
asyncio, so it shares the event loop of the test.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from http import HTTPStatus
from types import TracebackType
from typing import Any, Literal, TypeAlias

import orjson

__all__ = [
    "CHAT_PATHS",
    "DEFAULT_REPLY",
    "LOOPBACK_HOST",
    "FakeLLMServer",
    "Messages",
    "RecordedRequest",
    "Reply",
]

Messages: TypeAlias = list[dict[str, Any]]
Reply: TypeAlias = str | Callable[[Messages], str]
Dialect: TypeAlias = Literal["ollama", "openai"]

LOOPBACK_HOST = "127.0.0.1"
DEFAULT_REPLY = "Hello from the fake model."
FAKE_OLLAMA_VERSION = "0.9.0"

OLLAMA_CHAT_PATH = "/api/chat"
OLLAMA_GENERATE_PATH = "/api/generate"
OPENAI_CHAT_PATHS = ("/v1/chat/completions", "/chat/completions")
OPENAI_MODELS_PATHS = ("/v1/models", "/models")
CHAT_PATHS = frozenset({OLLAMA_CHAT_PATH, OLLAMA_GENERATE_PATH, *OPENAI_CHAT_PATHS})

# Bounds on how much one client can make the server read or loop.
MAX_HEAD_BYTES = 64 * 1024
MAX_HEADER_LINES = 100
MAX_BODY_BYTES = 16 * 1024 * 1024
MAX_REQUESTS_PER_CONNECTION = 10_000

_GET_METHODS = frozenset({"GET", "HEAD"})
_POST_METHODS = frozenset({"POST"})
_JSON = "application/json; charset=utf-8"
_NDJSON = "application/x-ndjson"
_EVENT_STREAM = "text/event-stream"
_PLAIN_TEXT = "text/plain; charset=utf-8"
# A word with the whitespace around it, so streamed pieces join back to the reply.
_REPLY_PIECE = re.compile(r"\s*\S+\s*")


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the server received it (`path` without its query string)."""

    method: str
    path: str
    headers: dict[str, str]
    """Header names lower-cased; repeated headers joined with ", "."""
    body: dict[str, Any] | None
    """The JSON object sent, or None when the body was empty, not JSON or not an object."""


@dataclass(frozen=True)
class _IncomingRequest:
    method: str
    path: str
    headers: dict[str, str]
    raw_body: bytes
    keep_alive: bool


@dataclass(frozen=True)
class _Response:
    status: int
    content_type: str
    body: bytes = b""
    stream: Sequence[bytes] | None = None
    """Pieces sent one chunk each with Transfer-Encoding: chunked; None for a plain body."""
    extra_headers: tuple[tuple[str, str], ...] = ()


_Handler: TypeAlias = Callable[[RecordedRequest], Awaitable[_Response]]


class _MalformedRequest(Exception):
    """The request cannot be parsed: answer with `status` and close the connection."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class FakeLLMServer:
    """A loopback LLM provider speaking Ollama and OpenAI wire formats.

    Use it as `async with FakeLLMServer() as llm:` and point the client at
    `llm.base_url` (Ollama) or `llm.base_url + "/v1"` (OpenAI-style). Every knob
    below is read when a chat request is answered, so a test may change it at
    any time.
    """

    def __init__(
        self,
        *,
        reply: Reply = DEFAULT_REPLY,
        models: Sequence[str] = ("llama3.2",),
        port: int = 0,
    ) -> None:
        self.reply: Reply = reply
        """The assistant's answer, or a function of the request's messages returning it."""
        self.models: tuple[str, ...] = tuple(models)
        self.delay: float = 0.0
        """Seconds to wait before answering a chat request."""
        self.chunk_delay: float = 0.0
        self.first_chunk_delay: float = 0.0
        """Seconds between a stream's headers and its first chunk (a model slow to start)."""
        """Seconds to wait between the pieces of a streamed answer."""
        self.fail_status: int | None = None
        """Answer chat requests with this HTTP status and a provider-shaped error body."""
        self.fail_times: int | None = None
        """Fail only the next N chat requests, then clear `fail_status`; None fails all."""
        self.retry_after: float | None = None
        """Seconds sent in a Retry-After header with each failure."""
        self.fail_in_body: bool = False
        """With `fail_status`, answer HTTP 200 carrying the error object instead, as OpenRouter
        reports a failure of the model behind it (`code` still the status): the whole body,
        or the first line (Ollama) or event (OpenAI) of a stream."""
        self.raw_answer: bytes | None = None
        """Answer chat requests with HTTP 200 and exactly these bytes as the body (streamed,
        in the stream's content type, when the request asks for a stream)."""
        self.write_size: int | None = None
        """Send streamed bodies in writes (HTTP chunks) of this many bytes, cutting lines and
        UTF-8 characters wherever they fall; None sends one line or event per chunk."""
        self.hold: asyncio.Event | None = None
        """Chat requests wait until this event is set (stop() cancels the wait)."""
        self.hold_if: Callable[[Messages], bool] | None = None
        """With `hold`, only the chat requests whose messages this accepts wait (e.g. one
        channel's); None: every one."""
        self.usage: tuple[int, int] | None = None
        """(prompt_tokens, completion_tokens) to report instead of word counts."""
        self.omit_usage: bool = False
        """Leave token counts out of answers, as some providers do."""
        self.openrouter_cost: float | None = None
        """When set, OpenAI-style usage carries OpenRouter's "cost" field."""

        self.requests: list[RecordedRequest] = []
        """Every request received, in arrival order."""
        self.chat_started = asyncio.Event()
        """Set when a chat request arrives; a test may clear it to wait for the next one."""
        self.chat_count = 0
        """Chat requests received so far."""
        self.before_answer: Callable[[], None] | None = None
        """Called just before a chat answer is written (e.g. to freeze another process at
        the moment the answer leaves)."""
        self.chat_answered = asyncio.Event()
        """Set once a chat answer has been written in full."""
        self.handler_errors: list[Exception] = []
        """Exceptions raised while answering (e.g. by a `reply` function), for tests to check."""

        self._port = port
        self._started = False
        self._stopping = False
        self._server: asyncio.Server | None = None
        self._connection_tasks: set[asyncio.Task[Any]] = set()
        self._routes: dict[str, tuple[frozenset[str], _Handler]] = {
            "/": (_GET_METHODS, self._ollama_banner),
            "/api/version": (_GET_METHODS, self._ollama_version),
            "/api/tags": (_GET_METHODS, self._ollama_tags),
            OLLAMA_CHAT_PATH: (_POST_METHODS, self._ollama_chat),
            OLLAMA_GENERATE_PATH: (_POST_METHODS, self._ollama_generate),
        }
        for path in OPENAI_MODELS_PATHS:
            self._routes[path] = (_GET_METHODS, self._openai_models)
        for path in OPENAI_CHAT_PATHS:
            self._routes[path] = (_POST_METHODS, self._openai_chat)

    # -- lifecycle ---------------------------------------------------------

    async def start(self) -> str:
        """Listen on 127.0.0.1 and return the base URL; a restart reuses the first port."""
        if self._server is None:
            self._stopping = False
            self._server = await asyncio.start_server(
                self._serve_connection, LOOPBACK_HOST, self._port, limit=MAX_HEAD_BYTES
            )
            self._port = self._server.sockets[0].getsockname()[1]
            self._started = True
        return self.base_url

    async def stop(self) -> None:
        """Stop listening and close every connection, cancelling held or delayed answers."""
        server = self._server
        if server is None:
            return
        self._server = None
        self._stopping = True
        server.close()
        tasks = list(self._connection_tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()

    async def __aenter__(self) -> FakeLLMServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()

    @property
    def port(self) -> int:
        """The TCP port the server listens (or, after stop(), listened) on."""
        self._require_started()
        return self._port

    @property
    def base_url(self) -> str:
        """`http://127.0.0.1:PORT`; stays valid after stop() so tests can see a dead provider."""
        return f"http://{LOOPBACK_HOST}:{self.port}"

    @property
    def chat_requests(self) -> list[RecordedRequest]:
        """The recorded requests to chat endpoints (Ollama chat/generate, OpenAI chat)."""
        return [request for request in self.requests if request.path in CHAT_PATHS]

    @property
    def open_connections(self) -> int:
        """Client connections currently being served."""
        return len(self._connection_tasks)

    def _require_started(self) -> None:
        if not self._started:
            raise RuntimeError("FakeLLMServer has not been started; await start() first")

    # -- connections -------------------------------------------------------

    async def _serve_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._connection_tasks.add(task)
        try:
            await self._serve_until_closed(reader, writer)
        except asyncio.CancelledError:
            # Ending normally when stop() cancelled us: Python 3.11's done-callback for
            # this task calls task.exception(), which would log the CancelledError.
            if not self._stopping:
                raise
        finally:
            if task is not None:
                self._connection_tasks.discard(task)

    async def _serve_until_closed(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            if not self._stopping:
                await self._serve_requests(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client went away mid-request; no one is left to answer
        except Exception as exc:  # a bug here must reach the test, not the loop's handler
            self.handler_errors.append(exc)
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _serve_requests(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        for served in range(1, MAX_REQUESTS_PER_CONNECTION + 1):
            try:
                request = await _read_request(reader)
            except _MalformedRequest as exc:
                rejection = _error_response("ollama", exc.status, str(exc))
                await _write_response(writer, rejection, keep_alive=False)
                return
            if request is None:
                return
            keep_alive = request.keep_alive and served < MAX_REQUESTS_PER_CONNECTION
            response = await self._answer(request)
            is_chat = request.path in CHAT_PATHS
            if is_chat and self.before_answer is not None:
                self.before_answer()
            await _write_response(
                writer,
                response,
                keep_alive=keep_alive,
                include_body=request.method != "HEAD",
                chunk_delay=self.chunk_delay,
                first_chunk_delay=self.first_chunk_delay,
                write_size=self.write_size,
            )
            if is_chat:
                self.chat_answered.set()
            if not keep_alive:
                return

    async def _answer(self, incoming: _IncomingRequest) -> _Response:
        request = RecordedRequest(
            method=incoming.method,
            path=incoming.path,
            headers=incoming.headers,
            body=_parse_json_object(incoming.raw_body),
        )
        self.requests.append(request)
        if request.path in CHAT_PATHS:
            self.chat_count += 1
            self.chat_started.set()
        dialect = _dialect_of(request.path)
        route = self._routes.get(request.path)
        if route is None:
            return _error_response(dialect, 404, f"not found: {request.path}")
        methods, handler = route
        if request.method not in methods:
            allow = (("Allow", ", ".join(sorted(methods))),)
            return _error_response(dialect, 405, f"{request.method} not allowed", allow)
        try:
            return await handler(request)
        except Exception as exc:  # e.g. a test's reply function raised: answer, and keep it
            self.handler_errors.append(exc)
            return _error_response(dialect, 500, f"fake LLM server failed: {exc!r}")

    # -- knobs shared by every chat endpoint ---------------------------------

    async def _await_turn(self, messages: Messages) -> None:
        hold = self.hold
        if hold is not None and (self.hold_if is None or self.hold_if(messages)):
            await hold.wait()
        if self.delay > 0:
            await asyncio.sleep(self.delay)

    def _take_failure(self, dialect: Dialect, *, streamed: bool) -> _Response | None:
        """The failure to answer with (the knobs `fail_*`), or None; `raw_answer` when set."""
        status = self.fail_status
        if status is None:
            if self.raw_answer is None:
                return None
            if not streamed:
                return _Response(200, _JSON, self.raw_answer)
            content_type = _NDJSON if dialect == "ollama" else _EVENT_STREAM
            return _Response(200, content_type, stream=[self.raw_answer])
        if self.fail_times is not None:
            if self.fail_times <= 0:
                self.fail_status = self.fail_times = None
                return None
            self.fail_times -= 1
            if self.fail_times == 0:
                self.fail_status = self.fail_times = None
        extra_headers: tuple[tuple[str, str], ...] = ()
        if self.retry_after is not None:
            extra_headers = (("Retry-After", f"{self.retry_after:g}"),)
        message = f"fake provider failure (HTTP {status})"
        if not self.fail_in_body:
            return _error_response(dialect, status, message, extra_headers)
        payload = _error_payload(dialect, status, message)
        if not streamed:
            return _json_response(200, payload, extra_headers)
        if dialect == "ollama":
            return _Response(200, _NDJSON, stream=[orjson.dumps(payload) + b"\n"])
        event = b"data: " + orjson.dumps(payload) + b"\n\n"
        return _Response(200, _EVENT_STREAM, stream=[event], extra_headers=extra_headers)

    def _compose_reply(self, messages: Messages) -> str:
        reply = self.reply
        return reply(messages) if callable(reply) else reply

    def _token_counts(self, messages: Messages, reply: str) -> tuple[int, int]:
        if self.usage is not None:
            return self.usage
        return _count_words(messages), len(reply.split())

    # -- Ollama --------------------------------------------------------------

    async def _ollama_banner(self, request: RecordedRequest) -> _Response:
        return _Response(200, _PLAIN_TEXT, b"Ollama is running")

    async def _ollama_version(self, request: RecordedRequest) -> _Response:
        return _json_response(200, {"version": FAKE_OLLAMA_VERSION})

    async def _ollama_tags(self, request: RecordedRequest) -> _Response:
        modified_at = _now_iso()
        listed = []
        for model in self.models:
            tagged = _with_tag(model)
            listed.append(
                {
                    "name": tagged,
                    "model": tagged,
                    "modified_at": modified_at,
                    "size": 0,
                    "digest": hashlib.sha256(tagged.encode()).hexdigest(),
                    "details": {
                        "parent_model": "",
                        "format": "gguf",
                        "family": "fake",
                        "families": ["fake"],
                        "parameter_size": "0B",
                        "quantization_level": "F16",
                    },
                }
            )
        return _json_response(200, {"models": listed})

    async def _ollama_chat(self, request: RecordedRequest) -> _Response:
        started_ns = time.perf_counter_ns()
        body = request.body
        if body is None:
            return _error_response("ollama", 400, "invalid JSON body")
        rejection = self._reject_ollama_model(body.get("model"))
        if rejection is not None:
            return rejection
        messages = body.get("messages") or []
        if not isinstance(messages, list):
            return _error_response("ollama", 400, "messages must be a list")
        await self._await_turn(messages)
        failure = self._take_failure("ollama", streamed=body.get("stream") is not False)
        if failure is not None:
            return failure
        reply = self._compose_reply(messages)
        header = {"model": body["model"], "created_at": _now_iso()}
        done = {
            **header,
            "message": {"role": "assistant", "content": reply},
            **self._ollama_done_fields(messages, reply, started_ns),
        }
        if body.get("stream") is False:
            return _json_response(200, done)
        lines: list[dict[str, Any]] = [
            {**header, "message": {"role": "assistant", "content": piece}, "done": False}
            for piece in _split_reply(reply)
        ]
        lines.append({**done, "message": {"role": "assistant", "content": ""}})
        return _ndjson_response(lines)

    async def _ollama_generate(self, request: RecordedRequest) -> _Response:
        started_ns = time.perf_counter_ns()
        body = request.body
        if body is None:
            return _error_response("ollama", 400, "invalid JSON body")
        rejection = self._reject_ollama_model(body.get("model"))
        if rejection is not None:
            return rejection
        prompt = body.get("prompt") or ""
        system = body.get("system") or ""
        if not isinstance(prompt, str) or not isinstance(system, str):
            return _error_response("ollama", 400, "prompt and system must be strings")
        messages: Messages = [{"role": "system", "content": system}] if system else []
        messages.append({"role": "user", "content": prompt})
        await self._await_turn(messages)
        failure = self._take_failure("ollama", streamed=body.get("stream") is not False)
        if failure is not None:
            return failure
        reply = self._compose_reply(messages)
        header = {"model": body["model"], "created_at": _now_iso()}
        done = {
            **header,
            "response": reply,
            **self._ollama_done_fields(messages, reply, started_ns),
        }
        if body.get("stream") is False:
            return _json_response(200, done)
        lines: list[dict[str, Any]] = [
            {**header, "response": piece, "done": False} for piece in _split_reply(reply)
        ]
        lines.append({**done, "response": ""})
        return _ndjson_response(lines)

    def _reject_ollama_model(self, model: object) -> _Response | None:
        if not isinstance(model, str) or not model:
            return _error_response("ollama", 400, "model is required")
        if _with_tag(model) not in {_with_tag(known) for known in self.models}:
            message = f"model '{model}' not found, try pulling it first"
            return _error_response("ollama", 404, message)
        return None

    def _ollama_done_fields(
        self, messages: Messages, reply: str, started_ns: int
    ) -> dict[str, Any]:
        total_ns = time.perf_counter_ns() - started_ns
        fields: dict[str, Any] = {
            "done": True,
            "done_reason": "stop",
            "total_duration": total_ns,
            "load_duration": 0,
            "prompt_eval_duration": total_ns // 2,
            "eval_duration": total_ns - total_ns // 2,
        }
        if not self.omit_usage:
            prompt_tokens, completion_tokens = self._token_counts(messages, reply)
            fields["prompt_eval_count"] = prompt_tokens
            fields["eval_count"] = completion_tokens
        return fields

    # -- OpenAI / OpenRouter ---------------------------------------------------

    async def _openai_models(self, request: RecordedRequest) -> _Response:
        created = int(time.time())
        listed = [
            {"id": model, "object": "model", "created": created, "owned_by": "fake-llm"}
            for model in self.models
        ]
        return _json_response(200, {"object": "list", "data": listed})

    async def _openai_chat(self, request: RecordedRequest) -> _Response:
        body = request.body
        if body is None:
            return _error_response("openai", 400, "request body must be a JSON object")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return _error_response("openai", 400, "'messages' must be a non-empty array")
        await self._await_turn(messages)
        failure = self._take_failure("openai", streamed=bool(body.get("stream")))
        if failure is not None:
            return failure
        reply = self._compose_reply(messages)
        usage = self._openai_usage(messages, reply)
        requested_model = body.get("model")
        header = {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "created": int(time.time()),
            "model": requested_model or (self.models[0] if self.models else "fake"),
            "system_fingerprint": "fp_fake",
        }
        if not body.get("stream"):
            completion: dict[str, Any] = {
                **header,
                "object": "chat.completion",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": reply},
                        "logprobs": None,
                        "finish_reason": "stop",
                    }
                ],
            }
            if usage is not None:
                completion["usage"] = usage
            return _json_response(200, completion)
        stream_options = body.get("stream_options")
        include_usage = isinstance(stream_options, dict) and bool(
            stream_options.get("include_usage")
        )
        return _sse_response(_openai_stream_chunks(header, reply, usage, include_usage))

    def _openai_usage(self, messages: Messages, reply: str) -> dict[str, Any] | None:
        if self.omit_usage:
            return None
        prompt_tokens, completion_tokens = self._token_counts(messages, reply)
        usage: dict[str, Any] = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }
        if self.openrouter_cost is not None:
            usage["cost"] = self.openrouter_cost
        return usage


def _openai_stream_chunks(
    header: dict[str, Any],
    reply: str,
    usage: dict[str, Any] | None,
    include_usage: bool,
) -> list[dict[str, Any]]:
    """The chat.completion.chunk objects of one streamed answer, in order."""
    base = {**header, "object": "chat.completion.chunk"}

    def choice_chunk(delta: dict[str, Any], finish_reason: str | None) -> dict[str, Any]:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return {**base, "choices": [choice]}

    chunks = [choice_chunk({"role": "assistant", "content": ""}, None)]
    chunks.extend(choice_chunk({"content": piece}, None) for piece in _split_reply(reply))
    chunks.append(choice_chunk({}, "stop"))
    if include_usage:
        # OpenAI sends "usage": null on every chunk but the last when usage is asked for.
        for chunk in chunks:
            chunk["usage"] = None
        if usage is not None:
            chunks.append({**base, "choices": [], "usage": usage})
    return chunks


# -- HTTP/1.1 plumbing -------------------------------------------------------


async def _read_request(reader: asyncio.StreamReader) -> _IncomingRequest | None:
    """Read one request; None when the client closed the connection between requests."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if exc.partial.strip():
            raise  # cut off mid-head: the caller treats it as a disconnect
        return None
    except asyncio.LimitOverrunError as exc:
        raise _MalformedRequest(431, "request head too large") from exc
    # Clients may send stray CRLFs between requests (RFC 9112, section 2.2).
    request_line, *header_lines = head[:-4].decode("latin-1").lstrip("\r\n").split("\r\n")
    if len(header_lines) > MAX_HEADER_LINES:
        raise _MalformedRequest(431, "too many header lines")
    parts = request_line.split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise _MalformedRequest(400, f"malformed request line: {request_line[:80]!r}")
    method, target, version = parts
    headers: dict[str, str] = {}
    for line in header_lines:
        name, colon, value = line.partition(":")
        name = name.strip().lower()
        if not colon or not name:
            raise _MalformedRequest(400, f"malformed header line: {line[:80]!r}")
        value = value.strip()
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    if "transfer-encoding" in headers:
        raise _MalformedRequest(501, "chunked request bodies are not supported")
    body_length = _content_length(headers)
    raw_body = await reader.readexactly(body_length) if body_length else b""
    connection = {token.strip() for token in headers.get("connection", "").lower().split(",")}
    # HTTP/1.1 keeps the connection open unless told to close; HTTP/1.0 the reverse.
    persistent_by_default = version != "HTTP/1.0"
    keep_alive = "close" not in connection if persistent_by_default else "keep-alive" in connection
    return _IncomingRequest(
        method=method,
        path=target.partition("?")[0],
        headers=headers,
        raw_body=raw_body,
        keep_alive=keep_alive,
    )


def _content_length(headers: dict[str, str]) -> int:
    declared = headers.get("content-length")
    if declared is None:
        return 0
    if not declared.isdigit():
        raise _MalformedRequest(400, f"invalid Content-Length: {declared[:40]!r}")
    length = int(declared)
    if length > MAX_BODY_BYTES:
        raise _MalformedRequest(413, f"body larger than {MAX_BODY_BYTES} bytes")
    return length


async def _write_response(
    writer: asyncio.StreamWriter,
    response: _Response,
    *,
    keep_alive: bool,
    include_body: bool = True,
    chunk_delay: float = 0.0,
    first_chunk_delay: float = 0.0,
    write_size: int | None = None,
) -> None:
    headers = [("Content-Type", response.content_type)]
    if response.stream is None:
        headers.append(("Content-Length", str(len(response.body))))
    else:
        headers.append(("Transfer-Encoding", "chunked"))
    if not keep_alive:
        headers.append(("Connection", "close"))
    headers.extend(response.extra_headers)
    head_lines = [f"HTTP/1.1 {response.status} {_reason_phrase(response.status)}"]
    head_lines.extend(f"{name}: {value}" for name, value in headers)
    head = ("\r\n".join(head_lines) + "\r\n\r\n").encode("latin-1")
    if response.stream is None:
        writer.write(head + response.body if include_body else head)
        await writer.drain()
        return
    writer.write(head)
    if first_chunk_delay > 0:
        await writer.drain()
        await asyncio.sleep(first_chunk_delay)
    pieces = response.stream
    if write_size is not None:
        whole = b"".join(pieces)
        pieces = [whole[start : start + write_size] for start in range(0, len(whole), write_size)]
    for index, piece in enumerate(pieces):
        if index and chunk_delay > 0:
            await asyncio.sleep(chunk_delay)
        writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
        # Draining each piece makes a vanished client surface here as ConnectionError.
        await writer.drain()
    writer.write(b"0\r\n\r\n")
    await writer.drain()


def _reason_phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:  # e.g. 529, which some providers use for "overloaded"
        return "Unknown"


def _json_response(
    status: int, payload: dict[str, Any], extra_headers: tuple[tuple[str, str], ...] = ()
) -> _Response:
    return _Response(status, _JSON, orjson.dumps(payload), extra_headers=extra_headers)


def _ndjson_response(lines: list[dict[str, Any]]) -> _Response:
    pieces = [orjson.dumps(line) + b"\n" for line in lines]
    return _Response(200, _NDJSON, stream=pieces)


def _sse_response(chunks: list[dict[str, Any]]) -> _Response:
    events = [b"data: " + orjson.dumps(chunk) + b"\n\n" for chunk in chunks]
    events.append(b"data: [DONE]\n\n")
    return _Response(
        200, _EVENT_STREAM, stream=events, extra_headers=(("Cache-Control", "no-cache"),)
    )


def _error_response(
    dialect: Dialect,
    status: int,
    message: str,
    extra_headers: tuple[tuple[str, str], ...] = (),
) -> _Response:
    """An error in the provider's own shape: Ollama's string, OpenAI's object."""
    return _json_response(status, _error_payload(dialect, status, message), extra_headers)


def _error_payload(dialect: Dialect, status: int, message: str) -> dict[str, Any]:
    if dialect == "ollama":
        return {"error": message}
    # `code` is the HTTP status, as OpenRouter sends it.
    return {"error": {"message": message, "type": _openai_error_type(status), "code": status}}


def _openai_error_type(status: int) -> str:
    if status >= 500:
        return "server_error"
    return {
        401: "authentication_error",
        403: "permission_error",
        404: "not_found_error",
        429: "rate_limit_error",
    }.get(status, "invalid_request_error")


def _dialect_of(path: str) -> Dialect:
    if path.startswith("/v1/") or path in OPENAI_CHAT_PATHS or path in OPENAI_MODELS_PATHS:
        return "openai"
    return "ollama"


def _parse_json_object(raw_body: bytes) -> dict[str, Any] | None:
    if not raw_body:
        return None
    try:
        parsed = orjson.loads(raw_body)
    except orjson.JSONDecodeError:
        return None
    return parsed if isinstance(parsed, dict) else None


def _with_tag(model: str) -> str:
    """Ollama's name for `model`: untagged names mean ":latest"."""
    name = model.rsplit("/", 1)[-1]
    return model if ":" in name else f"{model}:latest"


def _split_reply(reply: str) -> list[str]:
    """One piece per word, whitespace kept, so the pieces join back to `reply`."""
    pieces: list[str] = _REPLY_PIECE.findall(reply)
    if not pieces and reply:
        return [reply]  # all whitespace: still worth one piece
    return pieces


def _count_words(messages: list[Any]) -> int:
    """Whitespace-separated words in every message's content (text parts included)."""
    total = 0
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            total += len(content.split())
        elif isinstance(content, list):  # OpenAI content parts
            total += sum(
                len(part["text"].split())
                for part in content
                if isinstance(part, dict) and isinstance(part.get("text"), str)
            )
    return total


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
