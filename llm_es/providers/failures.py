"""How one provider's failures become the `ProviderError` tree, in messages safe to show.

A message names the provider and the problem, never a secret: the server's own
error text is scrubbed of the API key, of any piece of it and of anything key-shaped
(`scrub_secrets`; and left out for 401/403, where servers
echo part of a rejected key), and a URL is shown without user-info, query or
fragment. An error object inside a 200 answer counts as the status its `code`
names.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import orjson

from llm_es.config import scrub_secrets
from llm_es.errors import (
    ProviderAuthError,
    ProviderBadRequest,
    ProviderBadResponse,
    ProviderBusy,
    ProviderError,
    ProviderRateLimited,
    ProviderStreamBroken,
    ProviderTimeout,
    ProviderUnavailable,
)
from llm_es.providers.retry import retry_after_seconds

MAX_DETAIL_CHARS = 300
"""Longest piece of a server's own error text put into a message."""


@dataclass(frozen=True, slots=True)
class ProviderFailures:
    """The errors of one provider: `name` is their `provider`, `label` opens their messages."""

    name: str
    label: str
    """The provider's name as users read it ("OpenAI")."""
    url: str
    """Where the provider is, as `shown_url` gives it."""
    timeout: float
    secrets: tuple[str, ...]
    """Secrets scrubbed, whole or in pieces, from every server text put into a message (the
    API key); key-shaped words and bearer tokens are scrubbed whatever they are."""

    def status_error(self, response: httpx.Response) -> ProviderError:
        """The error for a non-200 answer: `<Label> API error: <status> <reason>[: detail]`."""
        try:
            body = orjson.loads(response.content)
        except orjson.JSONDecodeError:
            body = None
        detail = self._error_text(body.get("error")) if isinstance(body, dict) else ""
        reason = response.reason_phrase or _standard_reason(response.status_code)
        return self._api_error(response.status_code, reason, detail, response.headers)

    def body_error(
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

    def stream_error(self, error: object) -> ProviderStreamBroken:
        """The error for an error object met mid-stream (`<Label> stream failed: ...`).

        Never retried, whatever its code: part of the answer may have been passed on.
        """
        text = self._error_text(error)
        return self.stream_broken(f"failed: {text}" if text else "failed")

    def stream_broken(self, problem: str) -> ProviderStreamBroken:
        """`<Label> stream <problem>`; the provider had started answering, so it took the prompt."""
        return ProviderStreamBroken(
            self.name, f"{self.label} stream {problem}", prompt_consumed=True
        )

    def transport_error(self, exc: httpx.HTTPError, *, mid_stream: bool) -> ProviderError:
        """The error for a request httpx could not complete."""
        if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
            return ProviderUnavailable(self.name, f"{self.label} is not reachable at {self.url}")
        if isinstance(exc, httpx.PoolTimeout):
            return ProviderBusy(
                self.name, f"{self.label} is busy: no free connection within {self.timeout:g}s"
            )
        if isinstance(exc, httpx.TimeoutException):
            return ProviderTimeout(
                self.name, f"{self.label} did not answer within {self.timeout:g}s"
            )
        if mid_stream and isinstance(exc, httpx.TransportError | httpx.DecodingError):
            return ProviderStreamBroken(
                self.name, f"{self.label} stream broke off before the answer was complete"
            )
        if isinstance(exc, httpx.NetworkError | httpx.RemoteProtocolError):
            return ProviderUnavailable(
                self.name, f"{self.label} at {self.url} closed the connection without answering"
            )
        return ProviderError(self.name, f"{self.label} request failed: {type(exc).__name__}")

    def _api_error(
        self, status: int, reason: str, detail: str, headers: Mapping[str, str]
    ) -> ProviderError:
        message = f"{self.label} API error: {status} {reason}"
        # Servers echo part of a rejected key in auth errors: leave their text out.
        if status not in (401, 403) and detail:
            message += f": {detail}"
        retry_after = retry_after_seconds(headers)
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

    def _error_text(self, error: object) -> str:
        """The text of an error value, scrubbed of secrets and shortened: OpenAI's and
        OpenRouter's `{"message": ...}`, Ollama's plain string; "" when it has none."""
        if isinstance(error, dict):
            error = error.get("message")
        if not isinstance(error, str):
            return ""
        text = " ".join(scrub_secrets(error, self.secrets).split())
        if len(text) > MAX_DETAIL_CHARS:
            text = text[: MAX_DETAIL_CHARS - 3] + "..."
        return text


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


def _standard_reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown Status"
