"""Ollama over its HTTP API: /api/chat, /api/generate (JSON and NDJSON), /api/tags."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, Sequence
from typing import Any, Unpack

from llm_es.domain.messages import ChatMessage
from llm_es.errors import PartialUsage, ProviderBadResponse, ProviderError
from llm_es.providers.base import CallOptions, CompletionResult, token_count
from llm_es.providers.framing import read_out
from llm_es.providers.http import HTTPProvider

CHAT_PATH = "/api/chat"
GENERATE_PATH = "/api/generate"


class OllamaProvider(HTTPProvider):
    """A local or remote Ollama server."""

    name = "ollama"
    label = "Ollama"
    models_path = "/api/tags"

    async def chat(
        self, messages: Sequence[ChatMessage], **options: Unpack[CallOptions]
    ) -> CompletionResult:
        return await self._answer(CHAT_PATH, {"messages": list(messages)}, options)

    async def complete(
        self, prompt: str, *, system: str | None = None, **options: Unpack[CallOptions]
    ) -> CompletionResult:
        return await self._answer(GENERATE_PATH, _prompt(prompt, system), options)

    def stream(
        self, messages: Sequence[ChatMessage], **options: Unpack[CallOptions]
    ) -> AsyncGenerator[str | CompletionResult, None]:
        return self._stream_ndjson(CHAT_PATH, {"messages": list(messages)}, options)

    def stream_complete(
        self, prompt: str, *, system: str | None = None, **options: Unpack[CallOptions]
    ) -> AsyncGenerator[str | CompletionResult, None]:
        return self._stream_ndjson(GENERATE_PATH, _prompt(prompt, system), options)

    async def list_models(self) -> list[str]:
        """Names of the models the server has pulled."""
        data = await self._request_json("GET", self.models_path)
        models = data.get("models") or []
        return [m["name"] for m in models if isinstance(m, dict) and isinstance(m.get("name"), str)]

    def _body(
        self, fields: dict[str, Any], model: str, options: CallOptions, *, stream: bool
    ) -> dict[str, Any]:
        """A request body: `fields` (the messages, or the prompt and system) and the options."""
        temperature = options.get("temperature")
        sampling: dict[str, Any] = {
            "temperature": self._temperature if temperature is None else temperature
        }
        if (max_tokens := options.get("max_tokens")) is not None:
            sampling["num_predict"] = max_tokens
        return {"model": model, **fields, "stream": stream, "options": sampling}

    async def _answer(
        self, path: str, fields: dict[str, Any], options: CallOptions
    ) -> CompletionResult:
        """The answer of /api/chat or /api/generate, without streaming."""
        model = options.get("model") or self.default_model
        body = self._body(fields, model, options, stream=False)
        data = await self._request_json("POST", path, body)
        content = _content(path, data)
        if not isinstance(content, str):
            what = "message content" if path == CHAT_PATH else "response text"
            raise ProviderBadResponse(self.name, f"Ollama returned no {what}")
        return _result(data, content, model)

    async def _stream_ndjson(
        self, path: str, fields: dict[str, Any], options: CallOptions
    ) -> AsyncGenerator[str | CompletionResult, None]:
        """One JSON object per line; pieces in `message.content` (chat) or `response`
        (generate); the line with `done: true` carries the usage, so a failure before
        it carries only the text's length (`ProviderError.usage`)."""
        model = options.get("model") or self.default_model
        body = self._body(fields, model, options, stream=True)
        pieces: list[str] = []
        final: CompletionResult | None = None
        try:
            async with contextlib.aclosing(self._stream_lines(path, body)) as lines:
                async for line in lines:
                    if not line.strip():
                        continue
                    chunk = self._decode_chunk(line)
                    piece = _content(path, chunk)
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


def _content(path: str, data: dict[str, Any]) -> object:
    """The answer's text in a body or chunk: `message.content` (chat) or `response` (generate)."""
    if path == GENERATE_PATH:
        return data.get("response")
    message = data.get("message")
    return message.get("content") if isinstance(message, dict) else None


def _result(data: dict[str, Any], content: str, model: str) -> CompletionResult:
    finish_reason = data.get("done_reason")
    return CompletionResult(
        content=content,
        model=str(data.get("model") or model),
        prompt_tokens=token_count(data.get("prompt_eval_count")),
        completion_tokens=token_count(data.get("eval_count")),
        finish_reason=finish_reason if isinstance(finish_reason, str) else None,
    )
