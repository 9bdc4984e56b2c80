"""HTTP plumbing shared by the providers: sharded pools, retries, and error mapping.

`ShardedClient`: httpcore's connection pool does bookkeeping proportional to the
square of its connection count on every request (and closes "surplus idle"
connections by counting all of them), so one pool serving 32 concurrent calls
spends more CPU than the calls themselves (bench/turns.py, concurrency 32).
Spreading requests over shards of at most `SHARD_CONNECTIONS` connections keeps
each pool tiny while the total stays `shards * SHARD_CONNECTIONS`.

`HTTPProvider`: one JSON request or one line stream with the retries of
`RetryPolicy`, and every failure turned into the `ProviderError` tree with a
message that names the provider and the problem and never a secret.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import ssl
import string
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
    "MAX_TRAILING_LINES",
    "SHARD_CONNECTIONS",
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
                    return self._decode_object(response.content)
                error = cause = self._status_error(response)
            await self._wait_or_raise(error, cause, retries_done)
        raise AssertionError("unreachable: the last attempt raises")  # pragma: no cover

    async def _stream_lines(self, path: str, body: Mapping[str, Any]) -> AsyncGenerator[str, None]:
        """The lines of a streamed 200 answer to POST `path`.

        Failures before the answer starts are retried; once it has started (status
        200 received) nothing is, and a connection lost mid-way raises
        `ProviderStreamBroken`. Use inside `contextlib.aclosing`.
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
                        async for line in response.aiter_lines():
                            yield line
                        return
            except httpx.HTTPError as exc:
                error = self._transport_error(exc, mid_stream=started)
                cause: BaseException = exc
            except ProviderError as exc:
                error = cause = exc
            if started:
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
        message = f"{self.label} API error: {status} {reason}"
        # Servers echo part of a rejected key in auth errors: leave their text out.
        if status not in (401, 403) and (detail := self._error_detail(response.content)):
            message += f": {detail}"
        retry_after = retry_after_seconds(response.headers)
        if status == 429 and retry_after is not None:
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

    def _error_detail(self, raw: bytes) -> str:
        """The server's own error text from an error body, scrubbed and shortened."""
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return ""
        error = body.get("error") if isinstance(body, dict) else None
        if isinstance(error, dict):  # OpenAI and OpenRouter: {"error": {"message": ...}}
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
        return ProviderStreamBroken(self.name, f"{self.label} stream {problem}")


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
