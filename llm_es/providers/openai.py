"""OpenAI's chat-completions API (JSON and SSE), usable with any compatible server.

`base_url` points it at OpenAI, vLLM, LM Studio, Ollama's /v1 or any server that
speaks `/chat/completions` and `/models`. An empty API key sends no
Authorization header, as local servers expect.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, Mapping, Sequence
from typing import Any, ClassVar, Unpack

from llm_es.config import OpenAIConfig, OpenRouterConfig
from llm_es.domain.messages import ChatMessage
from llm_es.errors import ConfigError, PartialUsage, ProviderBadResponse, ProviderError
from llm_es.providers.base import CallOptions, CompletionResult, token_count
from llm_es.providers.framing import read_out, sse_data
from llm_es.providers.http import AUTHORIZATION, HTTPProvider, header_value
from llm_es.providers.retry import RetryPolicy

CHAT_PATH = "/chat/completions"
OPENAI_ORGANIZATION = "OpenAI-Organization"
SSE_DONE = "[DONE]"


class OpenAICompatibleProvider(HTTPProvider):
    """The OpenAI wire format; subclasses add their headers and body fields."""

    models_path = "/models"
    extra_body: ClassVar[Mapping[str, Any]] = {}
    """Fields added to every request body."""

    def __init__(
        self,
        config: OpenAIConfig | OpenRouterConfig,
        *,
        retry_policy: RetryPolicy | None,
        extra_headers: Mapping[str, str],
    ) -> None:
        key = config.api_key.reveal().strip()
        if key and not (key.isascii() and key.isprintable()):
            # Checked here because httpx would fail later with the key in the exception.
            raise ConfigError(f"providers.{self.name}.api_key", "must be printable ASCII")
        headers = {AUTHORIZATION: f"Bearer {key}"} if key else {}
        headers.update(
            (name, header_value(value)) for name, value in extra_headers.items() if value
        )
        super().__init__(config, retry_policy=retry_policy, headers=headers, secrets=(key,))

    async def chat(
        self, messages: Sequence[ChatMessage], **options: Unpack[CallOptions]
    ) -> CompletionResult:
        model = options.get("model") or self.default_model
        data = await self._request_json("POST", CHAT_PATH, self._body(messages, model, options))
        return self._completion(data, model)

    def stream(
        self, messages: Sequence[ChatMessage], **options: Unpack[CallOptions]
    ) -> AsyncGenerator[str | CompletionResult, None]:
        model = options.get("model") or self.default_model
        body = self._body(messages, model, options)
        body["stream"] = True
        # Without this a streamed answer carries no usage at all.
        body["stream_options"] = {"include_usage": True}
        return self._stream_sse(body, model)

    async def list_models(self) -> list[str]:
        """Ids of the models the server offers."""
        data = await self._request_json("GET", self.models_path)
        models = data.get("data") or []
        return [m["id"] for m in models if isinstance(m, dict) and isinstance(m.get("id"), str)]

    def _body(
        self, messages: Sequence[ChatMessage], model: str, options: CallOptions
    ) -> dict[str, Any]:
        temperature = options.get("temperature")
        body: dict[str, Any] = {
            "model": model,
            "messages": list(messages),
            "temperature": self._temperature if temperature is None else temperature,
        }
        if (max_tokens := options.get("max_tokens")) is not None:
            # `max_tokens`, not `max_completion_tokens`: every compatible server knows it.
            body["max_tokens"] = max_tokens
        body.update(self.extra_body)
        return body

    def _completion(self, data: dict[str, Any], model: str) -> CompletionResult:
        choice = _first_choice(data)
        message = choice.get("message") if choice is not None else None
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, str):
            raise ProviderBadResponse(self.name, f"{self.label} returned no message content")
        finish_reason = choice.get("finish_reason") if choice is not None else None
        return _result(data, content, model, finish_reason, data.get("usage"))

    async def _stream_sse(
        self, body: dict[str, Any], model: str
    ) -> AsyncGenerator[str | CompletionResult, None]:
        """Server-sent events: `data: <chunk>` per event, `data: [DONE]` at the end.

        Pieces come in `choices[0].delta.content`; the finish reason on the last
        choice chunk; the usage on a final chunk with no choices (earlier chunks
        carry `"usage": null`). Comment lines (OpenRouter's keep-alives) are skipped.
        A failure once the stream started carries what it had used (`ProviderError.usage`).
        """
        pieces: list[str] = []
        last: Mapping[str, Any] = {}
        finish_reason: object = None
        usage: object = None
        done = False
        try:
            async with (
                contextlib.aclosing(self._stream_lines(CHAT_PATH, body)) as lines,
                contextlib.aclosing(sse_data(lines)) as events,
            ):
                async for data in events:
                    if data == SSE_DONE:
                        done = True
                        await read_out(events)
                        break
                    chunk = self._decode_chunk(data)
                    last = chunk
                    if isinstance(chunk.get("usage"), dict):
                        usage = chunk["usage"]
                    choice = _first_choice(chunk)
                    if choice is None:
                        continue
                    if choice.get("finish_reason"):
                        finish_reason = choice["finish_reason"]
                    delta = choice.get("delta")
                    piece = delta.get("content") if isinstance(delta, dict) else None
                    if isinstance(piece, str) and piece:
                        pieces.append(piece)
                        yield piece
            # Some compatible servers end without [DONE]; a finish reason shows it is whole.
            if not done and finish_reason is None:
                raise self._failures.stream_broken("ended before the answer was complete")
        except ProviderError as exc:
            if exc.prompt_consumed and exc.usage is None:
                so_far = _result(last, "".join(pieces), model, finish_reason, usage)
                exc.usage = PartialUsage(
                    model=so_far.model,
                    prompt_tokens=so_far.prompt_tokens,
                    completion_tokens=so_far.completion_tokens,
                    completion_chars=len(so_far.content),
                    cost=so_far.cost,
                )
            raise
        yield _result(last, "".join(pieces), model, finish_reason, usage)


class OpenAIProvider(OpenAICompatibleProvider):
    """OpenAI, or any server speaking its chat-completions API."""

    name = "openai"
    label = "OpenAI"

    def __init__(self, config: OpenAIConfig, *, retry_policy: RetryPolicy | None = None) -> None:
        extra_headers = {OPENAI_ORGANIZATION: config.organization}
        super().__init__(config, retry_policy=retry_policy, extra_headers=extra_headers)


def _first_choice(data: Mapping[str, Any]) -> dict[str, Any] | None:
    choices = data.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        return choices[0]
    return None


def _result(
    data: Mapping[str, Any], content: str, model: str, finish_reason: object, usage: object
) -> CompletionResult:
    usage = usage if isinstance(usage, dict) else {}
    return CompletionResult(
        content=content,
        model=str(data.get("model") or model),
        prompt_tokens=token_count(usage.get("prompt_tokens")),
        completion_tokens=token_count(usage.get("completion_tokens")),
        finish_reason=finish_reason if isinstance(finish_reason, str) else None,
        cost=_cost(usage.get("cost")),
    )


def _cost(value: object) -> float | None:
    """OpenRouter's `usage.cost` (credits), or None when absent or not a number."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)
