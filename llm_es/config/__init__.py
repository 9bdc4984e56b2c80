"""The plugin's configuration: the seed's config.json format, validated into frozen dataclasses.

Inside: `_schema` (the dataclasses; each key's type carries its range and meaning),
`_validation` (msgspec conversion, errors that name the key), `_loading` (file,
environment, defaults), `_reference` (the sample config and the README table),
`_describe` (the words both of those use for a key's type), `_secret` (`Secret`,
`redact_url`), `personas` (the built-in personas). Every problem raises `ConfigError`
naming the full dotted key, what is wrong and what was given; secret values (API keys,
NATS password/token, passwords inside URLs) are never echoed.
"""

from llm_es.config._loading import ENV_OVERRIDES, load_config, load_config_sync, parse_config
from llm_es.config._reference import DEFAULT_CONFIG_JSON, config_reference, default_config_dict
from llm_es.config._schema import (
    DEFAULT_HTTP_LISTEN,
    LISTEN_EXPECTED,
    PERSONA_NAME_PATTERN,
    SUBJECT_PREFIX_PATTERN,
    Config,
    HttpConfig,
    NatsConfig,
    OllamaConfig,
    OpenAIConfig,
    OpenRouterConfig,
    ProviderName,
    ProvidersConfig,
    RateLimitsConfig,
    ServiceConfig,
    listen_address,
)
from llm_es.config._secret import Secret, redact_url, scrub_secrets, url_passwords

__all__ = [
    "DEFAULT_CONFIG_JSON",
    "DEFAULT_HTTP_LISTEN",
    "ENV_OVERRIDES",
    "LISTEN_EXPECTED",
    "PERSONA_NAME_PATTERN",
    "SUBJECT_PREFIX_PATTERN",
    "Config",
    "HttpConfig",
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
    "listen_address",
    "load_config",
    "load_config_sync",
    "parse_config",
    "redact_url",
    "scrub_secrets",
    "url_passwords",
]
