"""OpenRouter: the OpenAI wire format plus its ranking headers and per-call cost."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from llm_es.config import OpenRouterConfig
from llm_es.providers.openai import OpenAICompatibleProvider
from llm_es.providers.retry import RetryPolicy

HTTP_REFERER = "HTTP-Referer"
X_TITLE = "X-Title"


class OpenRouterProvider(OpenAICompatibleProvider):
    """OpenRouter; `CompletionResult.cost` carries the credits a call cost (`usage.cost`)."""

    name = "openrouter"
    label = "OpenRouter"
    # OpenRouter now always reports usage and cost; older deployments needed the ask.
    extra_body: ClassVar[Mapping[str, Any]] = {"usage": {"include": True}}

    def __init__(
        self, config: OpenRouterConfig, *, retry_policy: RetryPolicy | None = None
    ) -> None:
        extra_headers = {HTTP_REFERER: config.site_url, X_TITLE: config.site_name}
        super().__init__(config, retry_policy=retry_policy, extra_headers=extra_headers)
