"""`HTTPProvider`: the request and retry machinery every HTTP provider shares.

One JSON request, or one streamed answer read line by line (`framing`), with
the retries of `RetryPolicy`; every failure becomes the `ProviderError` tree
(`failures`). A 429, as an HTTP status or an error object's code, marks the
provider as throttled for the wait it asked for. Each attempt is told to
`attempts` (the plugin's metrics count calls and retries by status).
"""

from __future__ import annotations

import asyncio
import logging
import string
import time
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from typing import Any, ClassVar
from urllib.parse import quote

import httpx
import orjson

from llm_es.config import OllamaConfig, OpenAIConfig, OpenRouterConfig
from llm_es.errors import (
    ProviderBadResponse,
    ProviderError,
    ProviderRateLimited,
    ProviderStreamBroken,
    ProviderTimeout,
    ProviderUnavailable,
)
from llm_es.logs import log_kv
from llm_es.providers.base import LLMProvider
from llm_es.providers.failures import ProviderFailures, shown_url
from llm_es.providers.framing import MAX_LINE_BYTES, LineSplitter, LineTooLongError
from llm_es.providers.pool import ShardedClient
from llm_es.providers.retry import RetryPolicy

logger = logging.getLogger(__name__)

ProviderSettings = OllamaConfig | OpenAIConfig | OpenRouterConfig

AVAILABILITY_TIMEOUT_SECONDS = 5.0
MAX_CONNECT_SECONDS = 10.0
THROTTLE_WITHOUT_RETRY_AFTER_SECONDS = 60.0
"""How long a 429 that names no wait keeps `throttled()` true."""

# HTTP header names, in one place.
AUTHORIZATION = "Authorization"
CONTENT_TYPE = "Content-Type"
JSON_CONTENT_TYPE = "application/json"

AttemptObserver = Callable[[str, str, bool], None]
"""Told of each HTTP attempt: the provider's name, the attempt's status (`attempt_status`),
and whether it is tried again. Called synchronously: it must not block."""

_HEADER_SAFE = string.ascii_letters + string.digits + string.punctuation + " "


def attempt_status(error: ProviderError | None) -> str:
    """A bounded label for how an attempt ended: the HTTP status, else the kind of failure."""
    if error is None:
        return "200"
    if error.status is not None:
        return str(error.status)
    if isinstance(error, ProviderTimeout):
        return "timeout"
    if isinstance(error, ProviderUnavailable):
        return "unavailable"
    if isinstance(error, ProviderStreamBroken):
        return "stream_broken"
    return "bad_response"


def header_value(text: str) -> str:
    """`text` as a valid HTTP header value: non-ASCII and control characters %-encoded."""
    return quote(text, safe=_HEADER_SAFE)


class HTTPProvider(LLMProvider):
    """A provider reached over HTTP: its requests, their retries, and the throttle a 429 starts."""

    label: ClassVar[str]
    """The provider's name as users read it in messages ("OpenAI")."""
    models_path: ClassVar[str]
    """The model list: a 200 from it within `AVAILABILITY_TIMEOUT_SECONDS` means available."""

    def __init__(
        self,
        settings: ProviderSettings,
        *,
        retry_policy: RetryPolicy | None = None,
        headers: Mapping[str, str] | None = None,
        secrets: Sequence[str] = (),
    ) -> None:
        """`retry_policy` replaces the one built from the settings' `max_retries`."""
        self.default_model = settings.default_model
        self._temperature = settings.temperature
        self._timeout = settings.timeout
        self.retry_policy = retry_policy or RetryPolicy(max_retries=settings.max_retries)
        base_url = settings.base_url.rstrip("/")
        self._failures = ProviderFailures(
            self.name, self.label, shown_url(base_url), self._timeout, tuple(filter(None, secrets))
        )
        self.attempts: AttemptObserver | None = None
        """Told of every attempt (set by the plugin for its metrics; None: nobody)."""
        self._throttled_until: float | None = None
        """`time.monotonic()` until which the last 429 asked us to wait; None once answered."""
        self._http = ShardedClient(
            max_connections=settings.max_connections,
            base_url=base_url,
            timeout=httpx.Timeout(self._timeout, connect=min(self._timeout, MAX_CONNECT_SECONDS)),
            headers=headers,
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    @property
    def is_closed(self) -> bool:
        """Whether `aclose` closed the connection pools."""
        return self._http.is_closed

    def throttled(self) -> bool:
        """True while the wait asked by the last 429 (an HTTP status, or an error object's
        code) lasts: its Retry-After, else `THROTTLE_WITHOUT_RETRY_AFTER_SECONDS`.
        An answer received since clears it."""
        until = self._throttled_until
        return until is not None and time.monotonic() < until

    async def is_available(self) -> bool:
        try:
            with self._http.lease() as client:
                response = await client.get(
                    self.models_path, timeout=min(AVAILABILITY_TIMEOUT_SECONDS, self._timeout)
                )
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    async def _request_json(
        self, method: str, path: str, body: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """The JSON object a 200 answer carries, retrying as the policy allows."""
        content = None if body is None else orjson.dumps(body)
        headers = None if body is None else {CONTENT_TYPE: JSON_CONTENT_TYPE}
        for retries_done in range(self.retry_policy.max_retries + 1):
            try:
                with self._http.lease() as client:
                    response = await client.request(method, path, content=content, headers=headers)
            except httpx.HTTPError as exc:
                error = self._failures.transport_error(exc, mid_stream=False)
                error.__cause__ = exc  # as `raise ... from exc`: it is raised after the wait
            else:
                if response.status_code != 200:
                    error = self._failures.status_error(response)
                else:
                    data = self._decode_object(response.content)
                    body_error = self._failures.body_error(data, response.headers)
                    if body_error is None:
                        self._throttled_until = None
                        self._tell_attempt(None, retried=False)
                        return data
                    error = body_error
            await self._wait_or_raise(error, retries_done)
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
        for retries_done in range(self.retry_policy.max_retries + 1):
            started = False
            try:
                with self._http.lease() as client:
                    async with client.stream(
                        "POST", path, content=content, headers=headers
                    ) as response:
                        if response.status_code != 200:
                            await response.aread()
                            raise self._failures.status_error(response)
                        started = True
                        self._throttled_until = None
                        self._tell_attempt(None, retried=False)
                        splitter = LineSplitter()
                        async for chunk in response.aiter_bytes():
                            for line in splitter.feed(chunk):
                                yield line
                        for line in splitter.finish():
                            yield line
                        return
            except httpx.HTTPError as exc:
                error = self._failures.transport_error(exc, mid_stream=started)
                error.__cause__ = exc
            except LineTooLongError as exc:
                error = self._failures.stream_broken(
                    f"sent a line longer than {MAX_LINE_BYTES:,} bytes"
                )
                error.__cause__ = exc
            except ProviderError as exc:
                error = exc
            if started:
                error.prompt_consumed = True
                raise error
            await self._wait_or_raise(error, retries_done)

    async def _wait_or_raise(self, error: ProviderError, retries_done: int) -> None:
        """Sleep before the next attempt, or raise `error` when the policy says stop."""
        if isinstance(error, ProviderRateLimited):
            self._note_rate_limited(error.retry_after)
        delay = self.retry_policy.delay_before_retry(error, retries_done)
        self._tell_attempt(error, retried=delay is not None)
        if delay is None:
            raise error
        log_kv(
            logger,
            "provider_retry",
            level=logging.WARNING,
            provider=self.name,
            retry=retries_done + 1,
            of=self.retry_policy.max_retries,
            delay_s=round(delay, 3),
            error=str(error),
        )
        await asyncio.sleep(delay)

    def _tell_attempt(self, error: ProviderError | None, *, retried: bool) -> None:
        if self.attempts is not None:
            self.attempts(self.name, attempt_status(error), retried)

    def _decode_object(self, raw: bytes) -> dict[str, Any]:
        """A JSON object from the server, or ProviderBadResponse."""
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise ProviderBadResponse(self.name, f"{self.label} returned invalid JSON") from exc
        if not isinstance(data, dict):
            raise ProviderBadResponse(self.name, f"{self.label} returned an unexpected body")
        return data

    def _decode_chunk(self, data: str) -> dict[str, Any]:
        """One JSON object of a stream (an NDJSON line, an SSE event's data).

        An error object in it (`{"error": ...}`: Ollama's, and OpenRouter's when
        the model behind it fails mid-stream) breaks the stream.
        """
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise self._failures.stream_broken("sent invalid JSON") from exc
        if not isinstance(chunk, dict):
            raise self._failures.stream_broken("sent an unexpected chunk")
        error = chunk.get("error")
        if error is not None:
            if isinstance(error, dict) and error.get("code") == 429:
                self._note_rate_limited(None)
            raise self._failures.stream_error(error)
        return chunk

    def _note_rate_limited(self, retry_after: float | None) -> None:
        wait = THROTTLE_WITHOUT_RETRY_AFTER_SECONDS if retry_after is None else retry_after
        self._throttled_until = time.monotonic() + wait
