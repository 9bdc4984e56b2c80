"""Ollama over its HTTP API: /api/chat, /api/generate (JSON and NDJSON), /api/tags."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, Sequence
from typing import Any

from llm_es.config import OllamaConfig
from llm_es.errors import PartialUsage, ProviderBadResponse, ProviderError
from llm_es.providers.base import ChatMessage, CompletionResult, token_count
from llm_es.providers.framing import read_out
from llm_es.providers.http import HTTPProvider
from llm_es.providers.retry import RetryPolicy

CHAT_PATH = "/api/chat"
GENERATE_PATH = "/api/generate"


class OllamaProvider(HTTPProvider):
    """A local or remote Ollama server."""

    name = "ollama"
    label = "Ollama"
    models_path = "/api/tags"

    def __init__(self, config: OllamaConfig, *, retry_policy: RetryPolicy | None = None) -> None:
        super().__init__(config, retry_policy=retry_policy)

    async def chat(
        self,
        messages: Sequence[ChatMessage],
        *,
        model: str | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
    ) -> CompletionResult:
        chosen_model = model or self.default_model
        body = self._body(
            {"messages": list(messages)}, chosen_model, temperature, max_tokens, False
        )
        data = await self._request_json("POST", CHAT_PATH, body)
        content = _message_content(data)
        if content is None:
            raise ProviderBadResponse(self.name, "Ollama returned no message content")
        return _result(data, content, chosen_model)

    async def complete(
        self,
        prompt: str,
        *,
        system: str | None = None,
        model: str | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
    ) -> CompletionResult:
        chosen_model = model or self.default_model
        body = self._body(_prompt(prompt, system), chosen_model, temperature, max_tokens, False)
        data = await self._request_json("POST", GENERATE_PATH, body)
        content = data.get("response")
        if not isinstance(content, str):
            raise ProviderBadResponse(self.name, "Ollama returned no response text")
        return _result(data, content, chosen_model)

    def stream(
        self,
        messages: Sequence[ChatMessage],
        *,
        model: str | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
    ) -> AsyncGenerator[str | CompletionResult, None]:
        chosen_model = model or self.default_model
        body = self._body({"messages": list(messages)}, chosen_model, temperature, max_tokens, True)
        return self._stream_ndjson(CHAT_PATH, body, chosen_model)

    def stream_complete(
        self,
        prompt: str,
        *,
        system: str | None = None,
        model: str | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
    ) -> AsyncGenerator[str | CompletionResult, None]:
        chosen_model = model or self.default_model
        body = self._body(_prompt(prompt, system), chosen_model, temperature, max_tokens, True)
        return self._stream_ndjson(GENERATE_PATH, body, chosen_model)

    async def list_models(self) -> list[str]:
        """Names of the models the server has pulled."""
        data = await self._request_json("GET", self.models_path)
        models = data.get("models") or []
        return [m["name"] for m in models if isinstance(m, dict) and isinstance(m.get("name"), str)]

    def _body(
        self,
        fields: dict[str, Any],
        model: str,
        temperature: float | None,
        max_tokens: int | None,
        stream: bool,
    ) -> dict[str, Any]:
        """A request body: `fields` (the messages, or the prompt and system) and the options."""
        options: dict[str, Any] = {
            "temperature": self._temperature if temperature is None else temperature
        }
        if max_tokens is not None:
            options["num_predict"] = max_tokens
        return {"model": model, **fields, "stream": stream, "options": options}

    async def _stream_ndjson(
        self, path: str, body: dict[str, Any], model: str
    ) -> AsyncGenerator[str | CompletionResult, None]:
        """One JSON object per line; pieces in `message.content` (chat) or `response`
        (generate); the line with `done: true` carries the usage, so a failure before
        it carries only the text's length (`ProviderError.usage`)."""
        pieces: list[str] = []
        final: CompletionResult | None = None
        try:
            async with contextlib.aclosing(self._stream_lines(path, body)) as lines:
                async for line in lines:
                    if not line.strip():
                        continue
                    chunk = self._decode_chunk(line)
                    piece = _message_content(chunk) if path == CHAT_PATH else chunk.get("response")
                    if isinstance(piece, str) and piece:
                        pieces.append(piece)
                        yield piece
                    if chunk.get("done"):
                        final = _result(chunk, "".join(pieces), model)
                        await read_out(lines)
                        break
            if final is None:
                raise self._failures.stream_broken("ended without its final chunk")
        except ProviderError as exc:
            if exc.prompt_consumed and exc.usage is None:
                exc.usage = PartialUsage(model=model, completion_chars=sum(map(len, pieces)))
            raise
        yield final


def _prompt(prompt: str, system: str | None) -> dict[str, Any]:
    return {"prompt": prompt, "system": system} if system else {"prompt": prompt}


def _message_content(data: dict[str, Any]) -> str | None:
    message = data.get("message")
    content = message.get("content") if isinstance(message, dict) else None
    return content if isinstance(content, str) else None


def _result(data: dict[str, Any], content: str, model: str) -> CompletionResult:
    finish_reason = data.get("done_reason")
    return CompletionResult(
        content=content,
        model=str(data.get("model") or model),
        prompt_tokens=token_count(data.get("prompt_eval_count")),
        completion_tokens=token_count(data.get("eval_count")),
        finish_reason=finish_reason if isinstance(finish_reason, str) else None,
    )
