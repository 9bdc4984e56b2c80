"""The plugin's configuration: the seed's config.json format, validated into frozen dataclasses."""

from llm_es.config._secret import Secret, redact_url
from llm_es.config._settings import (
    DEFAULT_CONFIG_JSON,
    ENV_OVERRIDES,
    PERSONA_NAME_PATTERN,
    Config,
    NatsConfig,
    OllamaConfig,
    OpenAIConfig,
    OpenRouterConfig,
    ProviderName,
    ProvidersConfig,
    RateLimitsConfig,
    ServiceConfig,
    config_reference,
    default_config_dict,
    load_config,
    load_config_sync,
    parse_config,
)

__all__ = [
    "DEFAULT_CONFIG_JSON",
    "ENV_OVERRIDES",
    "PERSONA_NAME_PATTERN",
    "Config",
    "NatsConfig",
    "OllamaConfig",
    "OpenAIConfig",
    "OpenRouterConfig",
    "ProviderName",
    "ProvidersConfig",
    "RateLimitsConfig",
    "Secret",
    "ServiceConfig",
    "config_reference",
    "default_config_dict",
    "load_config",
    "load_config_sync",
    "parse_config",
    "redact_url",
]
