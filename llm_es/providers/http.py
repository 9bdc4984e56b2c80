"""HTTP plumbing shared by the providers: sharded pools, retries, and error mapping.

`ShardedClient`: httpcore's connection pool does bookkeeping proportional to the
square of its connection count on every request (and closes "surplus idle"
connections by counting all of them), so one pool serving 32 concurrent calls
spends more CPU than the calls themselves (bench/turns.py, concurrency 32).
Spreading requests over shards of at most `SHARD_CONNECTIONS` connections keeps
each pool tiny while the total stays `shards * SHARD_CONNECTIONS`.

`HTTPProvider`: one JSON request or one line stream with the retries of
`RetryPolicy`, and every failure turned into the `ProviderError` tree with a
message that names the provider and the problem and never a secret. An error
object inside a 200 answer counts as the status its `code` names, and a 429
either way marks the provider as throttled for the wait it asked for.

Stream lines end at LF (or CR LF) only, as SSE and NDJSON define them. httpx's
`aiter_lines` also ends a line at U+2028, U+2029, U+0085 and a few control
characters, which OpenAI and Ollama send raw inside JSON strings (openai-python
issue #1230): an answer holding one would be cut in two.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import ssl
import string
import time
from collections.abc import AsyncGenerator, Iterator, Mapping, Sequence
from http import HTTPStatus
from typing import Any, ClassVar, NoReturn
from urllib.parse import quote, urlsplit, urlunsplit

import httpx
import orjson

from llm_es.errors import (
    ProviderAuthError,
    ProviderBadRequest,
    ProviderBadResponse,
    ProviderError,
    ProviderRateLimited,
    ProviderStreamBroken,
    ProviderTimeout,
    ProviderUnavailable,
)
from llm_es.logs import log_kv
from llm_es.providers.base import LLMProvider
from llm_es.providers.retry import RetryPolicy, retry_after_seconds

__all__ = [
    "AVAILABILITY_TIMEOUT_SECONDS",
    "MAX_LINE_BYTES",
    "MAX_TRAILING_LINES",
    "SHARD_CONNECTIONS",
    "THROTTLE_WITHOUT_RETRY_AFTER_SECONDS",
    "HTTPProvider",
    "ShardedClient",
    "header_value",
    "shown_url",
]

logger = logging.getLogger(__name__)

SHARD_CONNECTIONS = 4
AVAILABILITY_TIMEOUT_SECONDS = 5.0
MAX_CONNECT_SECONDS = 10.0
MAX_TRAILING_LINES = 64
"""Lines read after a stream's final chunk so its connection can be reused; then it is dropped."""
MAX_DETAIL_CHARS = 300
"""Longest piece of a server's own error text put into a message."""
MAX_LINE_BYTES = 1024 * 1024
"""Longest stream line read; a longer one breaks the stream (a chunk is a few hundred bytes)."""
THROTTLE_WITHOUT_RETRY_AFTER_SECONDS = 60.0
"""How long a 429 that names no wait keeps `throttled()` true."""

# HTTP header names, in one place.
AUTHORIZATION = "Authorization"
CONTENT_TYPE = "Content-Type"
JSON_CONTENT_TYPE = "application/json"

_HEADER_SAFE = string.ascii_letters + string.digits + string.punctuation + " "


class ShardedClient:
    """A fixed set of httpx.AsyncClient shards; each request goes to the least busy one."""

    def __init__(
        self,
        *,
        base_url: str,
        timeout: httpx.Timeout,
        max_connections: int = 64,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        shards = max(1, -(-max_connections // SHARD_CONNECTIONS))
        limits = httpx.Limits(
            max_connections=SHARD_CONNECTIONS, max_keepalive_connections=SHARD_CONNECTIONS
        )
        # One TLS context for every shard: httpx would load the CA bundle from disk
        # for each client (~40 ms of blocking I/O apiece, 0.6 s for 16 shards).
        verify = _tls_context() if urlsplit(base_url).scheme == "https" else _plain_context()
        self._clients = [
            httpx.AsyncClient(
                base_url=base_url,
                timeout=timeout,
                limits=limits,
                headers=dict(headers or {}),
                verify=verify,
            )
            for _ in range(shards)
        ]
        self._in_flight = [0] * shards

    @contextlib.contextmanager
    def lease(self) -> Iterator[httpx.AsyncClient]:
        """The least busy shard, counted as busy until the block ends."""
        index = min(range(len(self._clients)), key=self._in_flight.__getitem__)
        self._in_flight[index] += 1
        try:
            yield self._clients[index]
        finally:
            self._in_flight[index] -= 1

    async def aclose(self) -> None:
        for client in self._clients:
            await client.aclose()


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """The verifying TLS context (system/certifi CAs), loaded once per process."""
    return httpx.create_ssl_context()


def _plain_context() -> ssl.SSLContext:
    """For plain-http servers: never used for a handshake, so it loads no CA bundle."""
    return ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)


def shown_url(url: str) -> str:
    """`url` fit for a message: no user-info, query or fragment (they may hold secrets)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "(invalid URL)"
    if ":" in host:
        host = f"[{host}]"
    netloc = host if port is None else f"{host}:{port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def header_value(text: str) -> str:
    """`text` as a valid HTTP header value: non-ASCII and control characters %-encoded."""
    return quote(text, safe=_HEADER_SAFE)


class HTTPProvider(LLMProvider):
    """A provider reached over HTTP: the request, retry and error-mapping machinery."""

    label: ClassVar[str]
    """The provider's name as users read it in messages ("OpenAI")."""

    def __init__(
        self,
        *,
        base_url: str,
        timeout: float,
        default_model: str,
        retry_policy: RetryPolicy,
        headers: Mapping[str, str] | None = None,
        secrets: Sequence[str] = (),
    ) -> None:
        self.default_model = default_model
        self._base_url = base_url.rstrip("/")
        self._shown_url = shown_url(self._base_url)
        self._timeout = timeout
        self._retry = retry_policy
        self._secrets = tuple(secret for secret in secrets if secret)
        self._throttled_until: float | None = None
        """`time.monotonic()` until which the last 429 asked us to wait; None once answered."""
        self._http = ShardedClient(
            base_url=self._base_url,
            timeout=httpx.Timeout(timeout, connect=min(timeout, MAX_CONNECT_SECONDS)),
            headers=headers,
        )

    @property
    def retry_policy(self) -> RetryPolicy:
        return self._retry

    async def aclose(self) -> None:
        await self._http.aclose()

    def throttled(self) -> bool:
        """True while the wait asked by the last 429 (an HTTP status, or an error object's
        code) lasts: its Retry-After, else `THROTTLE_WITHOUT_RETRY_AFTER_SECONDS`.
        An answer received since clears it."""
        until = self._throttled_until
        return until is not None and time.monotonic() < until

    async def _probe(self, path: str) -> bool:
        """True when GET `path` answers 200 within the availability timeout (no retries)."""
        try:
            with self._http.lease() as client:
                response = await client.get(
                    path, timeout=min(AVAILABILITY_TIMEOUT_SECONDS, self._timeout)
                )
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    # -- requests ----------------------------------------------------------------

    async def _request_json(
        self, method: str, path: str, body: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """The JSON object a 200 answer carries, retrying as the policy allows."""
        content = None if body is None else orjson.dumps(body)
        headers = None if body is None else {CONTENT_TYPE: JSON_CONTENT_TYPE}
        for retries_done in range(self._retry.max_retries + 1):
            try:
                with self._http.lease() as client:
                    response = await client.request(method, path, content=content, headers=headers)
            except httpx.HTTPError as exc:
                error = self._transport_error(exc, mid_stream=False)
                cause: BaseException = exc
            else:
                if response.status_code == 200:
                    data = self._decode_object(response.content)
                    body_error = self._body_error(data, response.headers)
                    if body_error is None:
                        self._throttled_until = None
                        return data
                    error = cause = body_error
                else:
                    error = cause = self._status_error(response)
            await self._wait_or_raise(error, cause, retries_done)
        raise AssertionError("unreachable: the last attempt raises")  # pragma: no cover

    async def _stream_lines(self, path: str, body: Mapping[str, Any]) -> AsyncGenerator[str, None]:
        """The lines of a streamed 200 answer to POST `path`, without their line ends.

        Failures before the answer starts are retried; once it has started (status
        200 received) nothing is, a connection lost mid-way raises
        `ProviderStreamBroken`, and every error raised has `prompt_consumed` set.
        Use inside `contextlib.aclosing`.
        """
        content = orjson.dumps(body)
        headers = {CONTENT_TYPE: JSON_CONTENT_TYPE}
        for retries_done in range(self._retry.max_retries + 1):
            started = False
            try:
                with self._http.lease() as client:
                    async with client.stream(
                        "POST", path, content=content, headers=headers
                    ) as response:
                        if response.status_code != 200:
                            await response.aread()
                            raise self._status_error(response)
                        started = True
                        self._throttled_until = None
                        splitter = _LineSplitter()
                        async for chunk in response.aiter_bytes():
                            for line in splitter.feed(chunk):
                                yield line
                        for line in splitter.finish():
                            yield line
                        return
            except httpx.HTTPError as exc:
                error = self._transport_error(exc, mid_stream=started)
                cause: BaseException = exc
            except _LineTooLongError as exc:
                error = self._stream_broken(f"sent a line longer than {MAX_LINE_BYTES:,} bytes")
                cause = exc
            except ProviderError as exc:
                error = cause = exc
            if started:
                error.prompt_consumed = True
                _raise(error, cause)
            await self._wait_or_raise(error, cause, retries_done)

    async def _wait_or_raise(
        self, error: ProviderError, cause: BaseException, retries_done: int
    ) -> None:
        """Sleep before the next attempt, or raise `error` when the policy says stop."""
        delay = self._retry.delay_before_retry(error, retries_done)
        if delay is None:
            _raise(error, cause)
        log_kv(
            logger,
            "provider_retry",
            level=logging.WARNING,
            provider=self.name,
            retry=retries_done + 1,
            of=self._retry.max_retries,
            delay_s=round(delay, 3),
            error=str(error),
        )
        await asyncio.sleep(delay)

    # -- decoding and errors -------------------------------------------------------

    def _decode_object(self, raw: bytes) -> dict[str, Any]:
        """A JSON object from the server, or ProviderBadResponse."""
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise ProviderBadResponse(self.name, f"{self.label} returned invalid JSON") from exc
        if not isinstance(data, dict):
            raise ProviderBadResponse(self.name, f"{self.label} returned an unexpected body")
        return data

    def _status_error(self, response: httpx.Response) -> ProviderError:
        """The error for a non-200 answer: `<Label> API error: <status> <reason>[: detail]`."""
        status = response.status_code
        reason = response.reason_phrase or _standard_reason(status)
        detail = self._error_detail(response.content)
        return self._api_error(status, reason, detail, response.headers)

    def _body_error(
        self, data: Mapping[str, Any], headers: Mapping[str, str]
    ) -> ProviderError | None:
        """The error object a 200 answer carries instead of an answer, or None.

        OpenRouter sends `{"error": {"code": 429, "message": ...}}` with a 200 when
        the model behind it fails; a `code` that is an HTTP error status counts as
        that status (so a 429 or 5xx is retried); without one (Ollama's
        `{"error": "..."}`) it is a `ProviderBadRequest`, not retried.
        """
        error = data.get("error")
        if error is None:
            return None
        code = error.get("code") if isinstance(error, dict) else None
        detail = self._error_text(error)
        if type(code) is int and 400 <= code < 600:
            return self._api_error(code, _standard_reason(code), detail, headers)
        message = f"{self.label} error: {detail}" if detail else f"{self.label} returned an error"
        return ProviderBadRequest(self.name, message)

    def _api_error(
        self, status: int, reason: str, detail: str, headers: Mapping[str, str]
    ) -> ProviderError:
        """The error of `status`; a 429 also starts the time `throttled()` reports."""
        message = f"{self.label} API error: {status} {reason}"
        # Servers echo part of a rejected key in auth errors: leave their text out.
        if status not in (401, 403) and detail:
            message += f": {detail}"
        retry_after = retry_after_seconds(headers)
        if status == 429:
            self._note_rate_limited(retry_after)
            if retry_after is not None:
                message += f" (retry after {retry_after:g}s)"
        kind: type[ProviderError]
        if status in (401, 403):
            kind = ProviderAuthError
        elif status == 429:
            kind = ProviderRateLimited
        elif 400 <= status < 500:
            kind = ProviderBadRequest
        else:
            kind = ProviderBadResponse
        return kind(self.name, message, status, retry_after=retry_after)

    def _decode_chunk(self, data: str) -> dict[str, Any]:
        """One JSON object of a stream (an NDJSON line, an SSE event's data).

        An error object in it (`{"error": ...}`: Ollama's, and OpenRouter's when
        the model behind it fails mid-stream) breaks the stream.
        """
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise self._stream_broken("sent invalid JSON") from exc
        if not isinstance(chunk, dict):
            raise self._stream_broken("sent an unexpected chunk")
        error = chunk.get("error")
        if error is not None:
            raise self._stream_error(error)
        return chunk

    def _stream_error(self, error: object) -> ProviderStreamBroken:
        """The error for an error object met mid-stream (`<Label> stream failed: ...`).

        Never retried, whatever its code: part of the answer may have been passed on.
        """
        if isinstance(error, dict) and error.get("code") == 429:
            self._note_rate_limited(None)
        text = self._error_text(error)
        return self._stream_broken(f"failed: {text}" if text else "failed")

    def _note_rate_limited(self, retry_after: float | None) -> None:
        wait = THROTTLE_WITHOUT_RETRY_AFTER_SECONDS if retry_after is None else retry_after
        self._throttled_until = time.monotonic() + wait

    def _error_detail(self, raw: bytes) -> str:
        """The server's own error text from an error body, scrubbed and shortened."""
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return ""
        return self._error_text(body.get("error")) if isinstance(body, dict) else ""

    def _error_text(self, error: object) -> str:
        """The text of an error value, scrubbed: OpenAI's and OpenRouter's
        `{"message": ...}`, Ollama's plain string; "" when it has none."""
        if isinstance(error, dict):
            error = error.get("message")
        return self._scrub(error) if isinstance(error, str) else ""

    def _scrub(self, text: str) -> str:
        """`text` with every secret replaced and its length bounded."""
        for secret in self._secrets:
            text = text.replace(secret, "***")
        text = " ".join(text.split())
        if len(text) > MAX_DETAIL_CHARS:
            text = text[: MAX_DETAIL_CHARS - 3] + "..."
        return text

    def _transport_error(self, exc: httpx.HTTPError, *, mid_stream: bool) -> ProviderError:
        if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
            return ProviderUnavailable(
                self.name, f"{self.label} is not reachable at {self._shown_url}"
            )
        if isinstance(exc, httpx.TimeoutException):
            return ProviderTimeout(
                self.name, f"{self.label} did not answer within {self._timeout:g}s"
            )
        if mid_stream and isinstance(exc, httpx.TransportError | httpx.DecodingError):
            return ProviderStreamBroken(
                self.name, f"{self.label} stream broke off before the answer was complete"
            )
        if isinstance(exc, httpx.NetworkError | httpx.RemoteProtocolError):
            return ProviderUnavailable(
                self.name,
                f"{self.label} at {self._shown_url} closed the connection without answering",
            )
        return ProviderError(self.name, f"{self.label} request failed: {type(exc).__name__}")

    def _stream_broken(self, problem: str) -> ProviderStreamBroken:
        """`<Label> stream <problem>`; the provider had started answering, so it took the prompt."""
        return ProviderStreamBroken(
            self.name, f"{self.label} stream {problem}", prompt_consumed=True
        )


class _LineTooLongError(ValueError):
    """A stream line grew past `MAX_LINE_BYTES` before its end arrived."""


class _LineSplitter:
    """Bytes in, whole text lines out: a line ends at LF only (a CR before it is
    dropped), as SSE and NDJSON define it.

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
        """The lines `chunk` completes (_LineTooLongError past `max_line_bytes`)."""
        end = chunk.rfind(b"\n")
        if end < 0:
            self._pending.append(chunk)
            self._pending_bytes += len(chunk)
            if self._pending_bytes > self.max_line_bytes:
                raise _LineTooLongError(f"a line longer than {self.max_line_bytes} bytes")
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
            raise _LineTooLongError(f"a line longer than {self.max_line_bytes} bytes")
        # One decode for all the complete lines: b"\n" is never part of a UTF-8
        # multi-byte sequence, so this reads each line as decoding it alone would.
        return _lines(whole.decode("utf-8", "replace"))

    def finish(self) -> list[str]:
        """The last line, when the stream ended without its LF."""
        rest = b"".join(self._pending)
        self._pending = []
        self._pending_bytes = 0
        return _lines(rest.decode("utf-8", "replace")) if rest else []


def _lines(text: str) -> list[str]:
    """`text` split at LF, a CR ending a line dropped."""
    lines = text.split("\n")
    return [line.removesuffix("\r") for line in lines] if "\r" in text else lines


def _raise(error: ProviderError, cause: BaseException) -> NoReturn:
    """Raise `error`, chained to the httpx exception behind it when there is one."""
    if error is cause:
        raise error
    raise error from cause


def _standard_reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown Status"
