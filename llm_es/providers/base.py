"""The provider interface every LLM backend implements, and its value types."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from typing import TypedDict, Unpack

from llm_es.domain.messages import ChatMessage


class CallOptions(TypedDict, total=False):
    """What a caller may choose per call; absent or None: the provider's configured default."""

    model: str | None
    temperature: float | None
    max_tokens: int | None
    """The longest answer, in tokens; None: no limit."""


@dataclass(frozen=True, slots=True)
class CompletionResult:
    """A provider's answer with its real usage (None where the provider gave none)."""

    content: str
    model: str
    prompt_tokens: int | None
    completion_tokens: int | None
    finish_reason: str | None
    cost: float | None = None


def token_count(value: object) -> int | None:
    """A token count as a provider reported it, or None when absent or not a non-negative int."""
    return value if type(value) is int and value >= 0 else None


def prompt_messages(prompt: str, system: str | None = None) -> list[ChatMessage]:
    """A single prompt as a conversation: the system message (if any), then the user's."""
    messages: list[ChatMessage] = []
    if system:
        messages.append({"role": "system", "content": system})
    messages.append({"role": "user", "content": prompt})
    return messages


class LLMProvider(ABC):
    """One LLM backend over its HTTP API."""

    name: str
    default_model: str

    @abstractmethod
    async def chat(
        self, messages: Sequence[ChatMessage], **options: Unpack[CallOptions]
    ) -> CompletionResult:
        """Answer a conversation (non-streaming)."""

    async def complete(
        self, prompt: str, *, system: str | None = None, **options: Unpack[CallOptions]
    ) -> CompletionResult:
        """Complete a single prompt; by default a chat of the system and user messages."""
        return await self.chat(prompt_messages(prompt, system), **options)

    @abstractmethod
    def stream(
        self, messages: Sequence[ChatMessage], **options: Unpack[CallOptions]
    ) -> AsyncGenerator[str | CompletionResult, None]:
        """Yield content pieces as they arrive, then one final CompletionResult.

        Failures before the answer starts (a 429/5xx status, no connection) are
        retried like `chat`; once it has started nothing is retried, and a stream
        that ends early raises `ProviderError` (its pieces are not an answer). Iterate it inside
        `contextlib.aclosing` so an early exit closes the connection at once.
        """

    def stream_complete(
        self, prompt: str, *, system: str | None = None, **options: Unpack[CallOptions]
    ) -> AsyncGenerator[str | CompletionResult, None]:
        """`complete`, streamed like `stream`; by default a chat of the system and user messages."""
        return self.stream(prompt_messages(prompt, system), **options)

    def throttled(self) -> bool:
        """True while the backend is refusing llm-es with 429 and its wait has not passed."""
        return False

    @abstractmethod
    async def is_available(self) -> bool:
        """True when the backend answers its health/model-list endpoint."""

    @abstractmethod
    async def aclose(self) -> None:
        """Close the pooled HTTP client."""

    async def list_models(self) -> list[str]:
        """Names of the models the backend offers (raises ProviderError on failure)."""
        raise NotImplementedError(f"{type(self).__name__} cannot list its models")
