"""Which providers a config builds, and the start-up refusal of a hosted one without a key."""

from __future__ import annotations

import pytest

from llm_es.app import build_providers
from llm_es.config import parse_config
from llm_es.errors import ConfigError


async def test_default_and_fallbacks_are_built() -> None:
    """The default provider and every fallback are available to the service."""
    config = parse_config(
        {
            "default_provider": "ollama",
            "fallback_providers": ["openrouter"],
            "providers": {"openrouter": {"api_key": "sk-or-x"}},
        },
        env={},
    )
    providers = build_providers(config)
    try:
        assert sorted(providers) == ["ollama", "openrouter"]
    finally:
        for provider in providers.values():
            await provider.aclose()


@pytest.mark.parametrize(
    ("provider", "env_name"), [("openai", "OPENAI_API_KEY"), ("openrouter", "OPENROUTER_API_KEY")]
)
def test_hosted_provider_without_a_key_stops_the_start(provider: str, env_name: str) -> None:
    """Choosing OpenAI or OpenRouter with no API key fails at start, naming key and variable."""
    config = parse_config({"default_provider": provider}, env={})
    with pytest.raises(ConfigError, match=rf"providers\.{provider}\.api_key.*{env_name}"):
        build_providers(config)


async def test_a_local_openai_compatible_server_needs_no_key() -> None:
    """vLLM or LM Studio on a local base_url work without a key."""
    config = parse_config(
        {
            "default_provider": "openai",
            "providers": {"openai": {"base_url": "http://127.0.0.1:1/v1"}},
        },
        env={},
    )
    providers = build_providers(config)
    try:
        assert "openai" in providers
    finally:
        for built in providers.values():
            await built.aclose()
