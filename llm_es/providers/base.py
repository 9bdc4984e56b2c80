"""The provider interface every LLM backend implements, and its value types."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Literal, TypedDict

Role = Literal["system", "user", "assistant"]


class ChatMessage(TypedDict):
    role: Role
    content: str


@dataclass(frozen=True, slots=True)
class CompletionResult:
    """A provider's answer with its real usage (None where the provider gave none)."""

    content: str
    model: str
    prompt_tokens: int | None
    completion_tokens: int | None
    finish_reason: str | None
    cost: float | None = None


class LLMProvider(ABC):
    """One LLM backend over its HTTP API."""

    name: str
    default_model: str

    @abstractmethod
    async def chat(
        self,
        messages: Sequence[ChatMessage],
        *,
        model: str | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
    ) -> CompletionResult:
        """Answer a conversation (non-streaming)."""

    @abstractmethod
    async def complete(
        self,
        prompt: str,
        *,
        system: str | None = None,
        model: str | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
    ) -> CompletionResult:
        """Complete a single prompt."""

    @abstractmethod
    def stream(
        self,
        messages: Sequence[ChatMessage],
        *,
        model: str | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
    ) -> AsyncIterator[str | CompletionResult]:
        """Yield content pieces as they arrive, then one final CompletionResult."""

    @abstractmethod
    async def is_available(self) -> bool:
        """True when the backend answers its health/model-list endpoint."""

    @abstractmethod
    async def aclose(self) -> None:
        """Close the pooled HTTP client."""
