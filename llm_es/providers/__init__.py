"""LLM providers (Ollama, OpenAI and compatible servers, OpenRouter) behind one interface.

`build_provider(name, config)` makes the provider a config names; every call
raises only the `ProviderError` tree of `llm_es.errors`.
"""

from __future__ import annotations

from typing import get_args

from llm_es.config import Config, ProviderName
from llm_es.domain.messages import ChatMessage, Role
from llm_es.providers.base import CallOptions, CompletionResult, LLMProvider, prompt_messages
from llm_es.providers.http import HTTPProvider
from llm_es.providers.ollama import OllamaProvider
from llm_es.providers.openai import OpenAICompatibleProvider, OpenAIProvider
from llm_es.providers.openrouter import OpenRouterProvider
from llm_es.providers.retry import RetryPolicy, is_retryable, retry_after_seconds

__all__ = [
    "PROVIDER_NAMES",
    "CallOptions",
    "ChatMessage",
    "CompletionResult",
    "HTTPProvider",
    "LLMProvider",
    "OllamaProvider",
    "OpenAICompatibleProvider",
    "OpenAIProvider",
    "OpenRouterProvider",
    "RetryPolicy",
    "Role",
    "build_provider",
    "is_retryable",
    "prompt_messages",
    "retry_after_seconds",
]

PROVIDER_NAMES: tuple[ProviderName, ...] = get_args(ProviderName)
"""Every provider name a config or a request may use."""


def build_provider(
    name: str, config: Config, *, retry_policy: RetryPolicy | None = None
) -> LLMProvider:
    """The provider `name` with its settings from `config` (ValueError for an unknown name).

    `retry_policy` replaces the one built from the provider's `max_retries`.
    """
    providers = config.providers
    if name == "ollama":
        return OllamaProvider(providers.ollama, retry_policy=retry_policy)
    if name == "openai":
        return OpenAIProvider(providers.openai, retry_policy=retry_policy)
    if name == "openrouter":
        return OpenRouterProvider(providers.openrouter, retry_policy=retry_policy)
    raise ValueError(f"unknown provider {name!r}; known: {', '.join(PROVIDER_NAMES)}")
