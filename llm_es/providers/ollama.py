"""Ollama over its HTTP API: /api/chat, /api/generate (JSON and NDJSON), /api/tags."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

import httpx
import orjson

from llm_es.config import OllamaConfig
from llm_es.errors import (
    ProviderBadResponse,
    ProviderError,
    ProviderTimeout,
    ProviderUnavailable,
)
from llm_es.providers.base import ChatMessage, CompletionResult, LLMProvider
from llm_es.providers.http import ShardedClient

AVAILABILITY_TIMEOUT_SECONDS = 5.0


class OllamaProvider(LLMProvider):
    """A local or remote Ollama server."""

    name = "ollama"

    def __init__(self, config: OllamaConfig) -> None:
        self._config = config
        self.default_model = config.default_model
        self._http = ShardedClient(
            base_url=config.base_url.rstrip("/"),
            timeout=httpx.Timeout(config.timeout, connect=min(config.timeout, 10.0)),
        )

    def _options(self, temperature: float | None, max_tokens: int | None) -> dict[str, Any]:
        options: dict[str, Any] = {
            "temperature": self._config.temperature if temperature is None else temperature
        }
        if max_tokens is not None:
            options["num_predict"] = max_tokens
        return options

    async def chat(
        self,
        messages: Sequence[ChatMessage],
        *,
        model: str | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
    ) -> CompletionResult:
        chosen_model = model or self.default_model
        body = {
            "model": chosen_model,
            "messages": list(messages),
            "stream": False,
            "options": self._options(temperature, max_tokens),
        }
        data = await self._post("/api/chat", body)
        message = data.get("message")
        if not isinstance(message, dict) or not isinstance(message.get("content"), str):
            raise ProviderBadResponse(self.name, "Ollama returned no message content")
        return self._result(data, message["content"], chosen_model)

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
        body: dict[str, Any] = {
            "model": chosen_model,
            "prompt": prompt,
            "stream": False,
            "options": self._options(temperature, max_tokens),
        }
        if system:
            body["system"] = system
        data = await self._post("/api/generate", body)
        content = data.get("response")
        if not isinstance(content, str):
            raise ProviderBadResponse(self.name, "Ollama returned no response text")
        return self._result(data, content, chosen_model)

    async def stream(
        self,
        messages: Sequence[ChatMessage],
        *,
        model: str | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
    ) -> AsyncIterator[str | CompletionResult]:
        chosen_model = model or self.default_model
        body = {
            "model": chosen_model,
            "messages": list(messages),
            "stream": True,
            "options": self._options(temperature, max_tokens),
        }
        pieces: list[str] = []
        try:
            with self._http.lease() as client:
                async with client.stream(
                    "POST", "/api/chat", content=orjson.dumps(body)
                ) as response:
                    if response.status_code != 200:
                        await response.aread()
                        raise self._status_error(response)
                    async for line in response.aiter_lines():
                        if not line.strip():
                            continue
                        chunk = self._decode(line.encode())
                        piece = (chunk.get("message") or {}).get("content") or ""
                        if piece:
                            pieces.append(piece)
                            yield piece
                        if chunk.get("done"):
                            yield self._result(chunk, "".join(pieces), chosen_model)
                            return
        except httpx.HTTPError as exc:
            raise self._transport_error(exc) from exc
        raise ProviderBadResponse(self.name, "Ollama stream ended without a final chunk")

    async def is_available(self) -> bool:
        try:
            with self._http.lease() as client:
                response = await client.get("/api/tags", timeout=AVAILABILITY_TIMEOUT_SECONDS)
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    async def list_models(self) -> list[str]:
        """Names of the models the server has pulled."""
        data = await self._get("/api/tags")
        models = data.get("models") or []
        return [m["name"] for m in models if isinstance(m, dict) and "name" in m]

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _get(self, path: str) -> dict[str, Any]:
        try:
            with self._http.lease() as client:
                response = await client.get(path)
        except httpx.HTTPError as exc:
            raise self._transport_error(exc) from exc
        return self._json(response)

    async def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        try:
            with self._http.lease() as client:
                response = await client.post(
                    path, content=orjson.dumps(body), headers={"Content-Type": "application/json"}
                )
        except httpx.HTTPError as exc:
            raise self._transport_error(exc) from exc
        return self._json(response)

    def _json(self, response: httpx.Response) -> dict[str, Any]:
        if response.status_code != 200:
            raise self._status_error(response)
        return self._decode(response.content)

    def _decode(self, raw: bytes) -> dict[str, Any]:
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise ProviderBadResponse(self.name, "Ollama returned invalid JSON") from exc
        if not isinstance(data, dict):
            raise ProviderBadResponse(self.name, "Ollama returned an unexpected body")
        if "error" in data:
            raise ProviderBadResponse(self.name, f"Ollama error: {data['error']}")
        return data

    def _status_error(self, response: httpx.Response) -> ProviderError:
        detail = ""
        try:
            body = orjson.loads(response.content)
            if isinstance(body, dict) and isinstance(body.get("error"), str):
                detail = f": {body['error']}"
        except orjson.JSONDecodeError:
            pass
        return ProviderBadResponse(
            self.name,
            f"Ollama API error: {response.status_code} {response.reason_phrase}{detail}",
            status=response.status_code,
        )

    def _transport_error(self, exc: httpx.HTTPError) -> ProviderError:
        if isinstance(exc, httpx.TimeoutException):
            return ProviderTimeout(
                self.name, f"Ollama did not answer within {self._config.timeout:g}s"
            )
        if isinstance(exc, httpx.ConnectError | httpx.RemoteProtocolError | httpx.ReadError):
            return ProviderUnavailable(
                self.name, f"Ollama is not reachable at {self._config.base_url}"
            )
        return ProviderError(self.name, f"Ollama request failed: {type(exc).__name__}")

    @staticmethod
    def _result(data: dict[str, Any], content: str, model: str) -> CompletionResult:
        prompt_tokens = data.get("prompt_eval_count")
        completion_tokens = data.get("eval_count")
        return CompletionResult(
            content=content,
            model=str(data.get("model") or model),
            prompt_tokens=prompt_tokens if isinstance(prompt_tokens, int) else None,
            completion_tokens=completion_tokens if isinstance(completion_tokens, int) else None,
            finish_reason=data.get("done_reason"),
        )
