"""Tests of llm_es.config: defaults, validation, env overrides, secrets, loading."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import orjson
import pytest

from llm_es.config import (
    DEFAULT_CONFIG_JSON,
    ENV_OVERRIDES,
    Config,
    NatsConfig,
    Secret,
    config_reference,
    default_config_dict,
    load_config,
    load_config_sync,
    parse_config,
)
from llm_es.config.personas import BUILTIN_PERSONAS
from llm_es.errors import ConfigError

SECRET = "sk-SEKRET-4242"
SECRET_NUMBER = 987654321

SEED_CONFIG = {
    "name": "llm",
    "enabled": True,
    "default_provider": "openrouter",
    "service": {"max_context_messages": 10, "default_persona": "default"},
    "providers": {
        "ollama": {
            "base_url": "http://localhost:11434",
            "timeout": 60.0,
            "default_model": "llama3.2",
        },
        "openai": {
            "api_key": "sk-...",
            "base_url": "https://api.openai.com/v1",
            "organization": "",
            "timeout": 60.0,
            "default_model": "gpt-4",
            "max_retries": 2,
        },
        "openrouter": {
            "api_key": "sk-or-...",
            "base_url": "https://openrouter.ai/api/v1",
            "site_url": "https://your-site.com",
            "site_name": "Rosey-Robot",
            "timeout": 60.0,
            "default_model": "anthropic/claude-3-sonnet",
        },
    },
    "rate_limits": {
        "requests_per_minute": 10,
        "requests_per_hour": 100,
        "requests_per_day": 500,
        "tokens_per_day": 50000,
    },
}


def parse(raw: object, **env: str) -> Config:
    """parse_config with an explicit environment, so the test machine's never leaks in."""
    return parse_config(raw, env=env)


# --- defaults --------------------------------------------------------------------------


def test_defaults_match_the_seed() -> None:
    """Config() carries the seed plugin's defaults."""
    config = Config()
    assert config.name == "llm"
    assert config.enabled is True
    assert config.default_provider == "ollama"
    assert config.service.max_context_messages == 10
    assert config.service.default_persona == "default"
    assert config.providers.ollama.base_url == "http://localhost:11434"
    assert config.providers.ollama.timeout == 60.0
    assert config.providers.ollama.default_model == "llama3.2"
    assert config.providers.openai.base_url == "https://api.openai.com/v1"
    assert config.providers.openai.default_model == "gpt-4"
    assert config.providers.openai.max_retries == 2
    assert config.providers.openrouter.base_url == "https://openrouter.ai/api/v1"
    assert config.providers.openrouter.site_name == "Rosey-Robot"
    assert config.providers.openrouter.default_model == "anthropic/claude-3-sonnet"
    limits = config.rate_limits
    assert (limits.requests_per_minute, limits.requests_per_hour) == (10, 100)
    assert (limits.requests_per_day, limits.tokens_per_day) == (500, 50000)
    assert dict(config.personas) == dict(BUILTIN_PERSONAS)
    assert config.nats == NatsConfig()
    assert config.nats.servers == ()


def test_empty_object_gives_the_default_config() -> None:
    """An empty config file and no environment give exactly Config()."""
    assert parse({}) == Config()


def test_config_is_frozen_and_hashable() -> None:
    """A Config cannot be changed after parsing and can be used as a dict key."""
    config = parse({})
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.name = "other"  # type: ignore[misc]
    assert hash(config) == hash(Config())


def test_seed_shaped_file_parses() -> None:
    """The seed README's config.json, all sections together, is accepted as is."""
    config = parse(SEED_CONFIG)
    assert config.default_provider == "openrouter"
    assert config.providers.openai.api_key.reveal() == "sk-..."
    assert config.providers.openrouter.api_key.reveal() == "sk-or-..."
    assert config.providers.openrouter.site_url == "https://your-site.com"
    assert config.provider == config.providers.openrouter
    assert config.rate_limits == Config().rate_limits


def test_every_key_can_be_set() -> None:
    """Each key of the extended format reaches its dataclass field."""
    raw = {
        "name": "llm2",
        "enabled": False,
        "default_provider": "openai",
        "service": {
            "max_context_messages": 3,
            "default_persona": "concise",
            "max_message_length": 100,
            "max_name_length": 20,
            "max_tokens": 256,
            "max_memories_in_prompt": 0,
            "admit_retries": 9,
        },
        "providers": {
            "ollama": {"temperature": 0, "timeout": 5},
            "openai": {"organization": "org-1", "max_retries": 0, "temperature": 2},
        },
        "rate_limits": {"tokens_per_day": 7},
        "nats": {
            "url": "nats://a:4222, tls://b:4222",
            "token": "tok",
            "creds": "/x.creds",
            "tls_ca": "/ca.pem",
            "tls_cert": "/c.pem",
            "tls_key": "/k.pem",
            "replicas": 3,
        },
    }
    config = parse(raw)
    assert config.name == "llm2"
    assert config.enabled is False
    assert config.provider == config.providers.openai
    assert config.service == dataclasses.replace(
        Config().service,
        max_context_messages=3,
        default_persona="concise",
        max_message_length=100,
        max_name_length=20,
        max_tokens=256,
        max_memories_in_prompt=0,
        admit_retries=9,
    )
    assert config.providers.ollama.temperature == 0.0
    assert isinstance(config.providers.ollama.timeout, float)
    assert config.providers.openai.organization == "org-1"
    assert config.rate_limits.tokens_per_day == 7
    assert config.nats.servers == ("nats://a:4222", "tls://b:4222")
    assert config.nats.token == Secret("tok")
    assert config.nats.tls_key == "/k.pem"
    assert config.nats.replicas == 3


def test_null_rate_limit_means_no_limit() -> None:
    """A rate limit given as JSON null becomes None: that window is unlimited."""
    config = parse({"rate_limits": {"requests_per_minute": None, "tokens_per_day": None}})
    assert config.rate_limits.requests_per_minute is None
    assert config.rate_limits.tokens_per_day is None
    assert config.rate_limits.requests_per_hour == 100


def test_integer_accepted_where_a_number_is_expected() -> None:
    """A timeout written as 30 (a JSON integer) is accepted and stored as a float."""
    config = parse({"providers": {"openai": {"timeout": 30}}})
    assert config.providers.openai.timeout == 30.0


def test_base_url_trailing_slash_is_removed() -> None:
    """base_url values are stored without a trailing slash so paths join cleanly."""
    config = parse({"providers": {"ollama": {"base_url": "http://gpu-box:11434/"}}})
    assert config.providers.ollama.base_url == "http://gpu-box:11434"


# --- validation ------------------------------------------------------------------------

INVALID = [
    pytest.param([], "(top level)", "expected a JSON object", id="top-level-array"),
    pytest.param("x", "(top level)", "expected a JSON object", id="top-level-string"),
    pytest.param({"nmae": "x"}, "nmae", "did you mean 'name'", id="unknown-top-key"),
    pytest.param(
        {"service": {"max_contxt_messages": 5}},
        "service.max_contxt_messages",
        "unknown key (did you mean 'max_context_messages'?); known keys: max_context_messages,",
        id="unknown-nested-key",
    ),
    pytest.param(
        {"providers": {"anthropic": {}}},
        "providers.anthropic",
        "known keys: ollama, openai, openrouter",
        id="unknown-provider-section",
    ),
    pytest.param({"service": 3}, "service", "expected an object, got 3", id="section-not-object"),
    pytest.param({"name": 5}, "name", "expected a non-empty string, got 5", id="name-type"),
    pytest.param({"name": " "}, "name", "got an empty string", id="name-empty"),
    pytest.param({"enabled": "yes"}, "enabled", 'expected a boolean, got "yes"', id="bool-type"),
    pytest.param(
        {"service": {"max_context_messages": True}},
        "service.max_context_messages",
        "expected an integer >= 1, got true (boolean)",
        id="bool-is-not-int",
    ),
    pytest.param(
        {"service": {"max_context_messages": 10.0}},
        "service.max_context_messages",
        "expected an integer >= 1, got 10.0",
        id="integral-float-is-not-int",
    ),
    pytest.param(
        {"service": {"max_context_messages": "10"}},
        "service.max_context_messages",
        'got "10" (string)',
        id="string-is-not-int",
    ),
    pytest.param(
        {"service": {"max_context_messages": 0}},
        "service.max_context_messages",
        "must be >= 1, got 0",
        id="int-below-minimum",
    ),
    pytest.param(
        {"service": {"max_memories_in_prompt": -1}},
        "service.max_memories_in_prompt",
        "must be >= 0, got -1",
        id="int-negative",
    ),
    pytest.param(
        {"service": {"max_tokens": None}},
        "service.max_tokens",
        "got null",
        id="null-not-allowed",
    ),
    pytest.param(
        {"rate_limits": {"requests_per_day": 0}},
        "rate_limits.requests_per_day",
        "must be >= 1, got 0",
        id="rate-limit-zero",
    ),
    pytest.param(
        {"rate_limits": {"tokens_per_day": False}},
        "rate_limits.tokens_per_day",
        "expected an integer >= 1 or null, got false",
        id="rate-limit-bool",
    ),
    pytest.param(
        {"providers": {"ollama": {"timeout": 0}}},
        "providers.ollama.timeout",
        "must be > 0, got 0",
        id="timeout-zero",
    ),
    pytest.param(
        {"providers": {"openai": {"timeout": True}}},
        "providers.openai.timeout",
        "expected a number > 0, got true",
        id="timeout-bool",
    ),
    pytest.param(
        {"providers": {"openrouter": {"temperature": 2.5}}},
        "providers.openrouter.temperature",
        "must be between 0 and 2, got 2.5",
        id="temperature-range",
    ),
    pytest.param(
        {"providers": {"openai": {"max_retries": -1}}},
        "providers.openai.max_retries",
        "must be >= 0, got -1",
        id="max-retries-negative",
    ),
    pytest.param(
        {"providers": {"ollama": {"base_url": "localhost:11434"}}},
        "providers.ollama.base_url",
        'expected an http(s) URL, got "localhost:11434"',
        id="base-url-no-scheme",
    ),
    pytest.param(
        {"providers": {"openai": {"base_url": "ftp://api.openai.com"}}},
        "providers.openai.base_url",
        "expected an http(s) URL",
        id="base-url-ftp",
    ),
    pytest.param(
        {"providers": {"openai": {"base_url": "http://host:notaport"}}},
        "providers.openai.base_url",
        "expected an http(s) URL",
        id="base-url-bad-port",
    ),
    pytest.param(
        {"providers": {"ollama": {"default_model": ""}}},
        "providers.ollama.default_model",
        "got an empty string",
        id="model-empty",
    ),
    pytest.param(
        {"default_provider": "claude"},
        "default_provider",
        'expected one of "ollama", "openai", "openrouter", got "claude"',
        id="default-provider",
    ),
    pytest.param(
        {"fallback_providers": "openai"},
        "fallback_providers",
        'expected a list of one of "ollama", "openai", "openrouter", got "openai"',
        id="fallback-not-a-list",
    ),
    pytest.param(
        {"fallback_providers": ["openai", "claude"]},
        "fallback_providers[1]",
        'expected one of "ollama", "openai", "openrouter", got "claude" (string)',
        id="fallback-unknown-provider",
    ),
    pytest.param(
        {"fallback_providers": ["openai", "openai"]},
        "fallback_providers",
        "without repeats",
        id="fallback-repeated",
    ),
    pytest.param(
        {"service": {"reply_prefixes": ["rosey.reply", "rosey.*"]}},
        "service.reply_prefixes[1]",
        'expected a subject prefix of plain tokens (no wildcards, no leading $), got "rosey.*"',
        id="reply-prefix-wildcard",
    ),
    pytest.param(
        {"service": {"reply_prefixes": ["$JS.API"]}},
        "service.reply_prefixes[0]",
        "no leading $",
        id="reply-prefix-api",
    ),
    pytest.param(
        {"nats": {"inbox_prefix": "_INBOX."}},
        "nats.inbox_prefix",
        "expected a subject prefix of plain tokens",
        id="inbox-prefix-trailing-dot",
    ),
    pytest.param(
        {"service": {"default_persona": "pirate"}},
        "service.default_persona",
        "unknown persona 'pirate'; known personas: default, concise, technical, creative",
        id="default-persona-unknown",
    ),
    pytest.param({"personas": []}, "personas", "expected an object", id="personas-not-object"),
    pytest.param(
        {"personas": {"Pirate": "Arr"}},
        "personas.Pirate",
        "invalid persona name",
        id="persona-name-uppercase",
    ),
    pytest.param(
        {"personas": {"x" * 33: "Arr"}},
        "personas." + "x" * 33,
        "invalid persona name",
        id="persona-name-too-long",
    ),
    pytest.param(
        {"personas": {"pirate": "  "}},
        "personas.pirate",
        "expected a non-empty system prompt",
        id="persona-prompt-empty",
    ),
    pytest.param(
        {"personas": {"pirate": 3}},
        "personas.pirate",
        "expected a non-empty system prompt, got 3",
        id="persona-prompt-type",
    ),
    pytest.param(
        {"nats": {"url": "http://localhost:4222"}},
        "nats.url",
        "expected NATS server URL(s)",
        id="nats-url-scheme",
    ),
    pytest.param(
        {"nats": {"url": "nats://a:4222,"}},
        "nats.url",
        "expected NATS server URL(s)",
        id="nats-url-empty-entry",
    ),
    pytest.param(
        {"nats": {"replicas": 0}},
        "nats.replicas",
        "must be between 1 and 5, got 0",
        id="nats-replicas-zero",
    ),
    pytest.param(
        {"nats": {"replicas": 6}},
        "nats.replicas",
        "must be between 1 and 5, got 6",
        id="nats-replicas-too-many",
    ),
    pytest.param(
        {"nats": {"user": "bot"}},
        "nats.password",
        "required when the other of nats.user/nats.password is set",
        id="nats-user-without-password",
    ),
    pytest.param(
        {"nats": {"tls_key": "/k.pem"}},
        "nats.tls_cert",
        "required when the other of nats.tls_cert/nats.tls_key is set",
        id="nats-tls-key-without-cert",
    ),
    pytest.param(
        {"providers": {"openai": {"api_key": None}}},
        "providers.openai.api_key",
        "expected a string (secret), got null",
        id="api-key-null",
    ),
    pytest.param(
        {"http": {"listen": "localhost"}},
        "http.listen",
        'expected HOST:PORT (e.g. 127.0.0.1:8642; port 0 picks a free one), got "localhost"',
        id="listen-without-port",
    ),
    pytest.param(
        {"http": {"listen": "127.0.0.1:65536"}},
        "http.listen",
        "expected HOST:PORT",
        id="listen-port-too-high",
    ),
    pytest.param(
        {"http": {"listen": ":8642"}}, "http.listen", "expected HOST:PORT", id="listen-no-host"
    ),
    pytest.param(
        {"http": {"listen": 8642}}, "http.listen", "expected a string or null", id="listen-number"
    ),
]


@pytest.mark.parametrize(("raw", "key", "fragment"), INVALID)
def test_invalid_config_names_the_key(raw: object, key: str, fragment: str) -> None:
    """Each kind of invalid value fails with a ConfigError naming its full dotted key."""
    with pytest.raises(ConfigError) as caught:
        parse(raw)
    assert caught.value.key == key
    assert str(caught.value).startswith(f"config key '{key}': ")
    assert fragment in caught.value.problem


@pytest.mark.parametrize(
    ("listen", "address"),
    [
        ("127.0.0.1:8642", ("127.0.0.1", 8642)),
        ("0.0.0.0:0", ("0.0.0.0", 0)),
        ("[::1]:9100", ("::1", 9100)),
        ("metrics.internal:80", ("metrics.internal", 80)),
        (None, None),
    ],
)
def test_http_listen_gives_the_address(listen: str | None, address: object) -> None:
    """http.listen is HOST:PORT (IPv6 in brackets), or null for no listener; default 8642."""
    assert parse({"http": {"listen": listen}}).http.address == address
    assert parse({}).http.address == ("127.0.0.1", 8642)


def test_unknown_key_lists_known_keys_without_a_close_match() -> None:
    """An unknown key with no near miss still lists every known key of its section."""
    with pytest.raises(ConfigError) as caught:
        parse({"rate_limits": {"zzz": 1}})
    assert caught.value.problem == (
        "unknown key; known keys: requests_per_minute, requests_per_hour, "
        "requests_per_day, tokens_per_day"
    )


@pytest.mark.parametrize(
    ("raw", "key", "problem"),
    [
        pytest.param(
            {"providers": {"ollama": {"timeout": float("inf")}}},
            "providers.ollama.timeout",
            "expected a finite number, got inf (number)",
            id="infinite-timeout",
        ),
        pytest.param(
            {"providers": {"ollama": {"temperature": float("nan")}}},
            "providers.ollama.temperature",
            "must be between 0 and 2, got nan (number)",
            id="nan-temperature",
        ),
    ],
)
def test_non_finite_numbers_are_rejected(raw: object, key: str, problem: str) -> None:
    """inf and nan (which only a Python caller can pass; JSON has neither) fail, shown as such."""
    with pytest.raises(ConfigError) as caught:
        parse(raw)
    assert (caught.value.key, caught.value.problem) == (key, problem)


# --- environment -----------------------------------------------------------------------


def test_env_overrides_win_over_the_file() -> None:
    """Every documented environment variable replaces the file's value for its key."""
    raw = {
        "providers": {
            "ollama": {"base_url": "http://file:11434"},
            "openai": {"api_key": "from-file"},
            "openrouter": {"api_key": "from-file"},
        },
        "nats": {"url": "nats://file:4222", "user": "file", "password": "file"},
    }
    config = parse(
        raw,
        LLM_ES_NATS_URL="nats://env:4222",
        LLM_ES_NATS_USER="env-user",
        LLM_ES_NATS_PASSWORD="env-pass",
        LLM_ES_NATS_TOKEN="env-token",
        LLM_ES_NATS_CREDS="/env.creds",
        OPENAI_API_KEY="sk-env",
        OPENROUTER_API_KEY="sk-or-env",
        OLLAMA_HOST="https://env-host:8443",
    )
    assert config.nats.url == "nats://env:4222"
    assert config.nats.user == "env-user"
    assert config.nats.password == Secret("env-pass")
    assert config.nats.token == Secret("env-token")
    assert config.nats.creds == "/env.creds"
    assert config.providers.openai.api_key.reveal() == "sk-env"
    assert config.providers.openrouter.api_key.reveal() == "sk-or-env"
    assert config.providers.ollama.base_url == "https://env-host:8443"
    assert raw["nats"] == {"url": "nats://file:4222", "user": "file", "password": "file"}


def test_env_overrides_fill_missing_sections() -> None:
    """An override applies even when the file has no section for its key."""
    config = parse({}, OPENAI_API_KEY="sk-env", LLM_ES_NATS_URL="localhost:4222")
    assert config.providers.openai.api_key.reveal() == "sk-env"
    assert config.nats.servers == ("localhost:4222",)


def test_empty_env_variable_counts_as_unset() -> None:
    """OPENAI_API_KEY='' leaves the file's key in place instead of blanking it."""
    config = parse({"providers": {"openai": {"api_key": "from-file"}}}, OPENAI_API_KEY="")
    assert config.providers.openai.api_key.reveal() == "from-file"


@pytest.mark.parametrize(
    ("ollama_host", "base_url"),
    [
        ("gpu-box:1234", "http://gpu-box:1234"),
        ("gpu-box", "http://gpu-box:11434"),
        ("127.0.0.1", "http://127.0.0.1:11434"),
        ("[::1]:11434", "http://[::1]:11434"),
        ("http://gpu-box:11434/", "http://gpu-box:11434"),
        ("https://ollama.example.com", "https://ollama.example.com"),
    ],
)
def test_ollama_host_is_read_as_ollama_reads_it(ollama_host: str, base_url: str) -> None:
    """OLLAMA_HOST without a scheme means http, and without a port means 11434."""
    config = parse({}, OLLAMA_HOST=ollama_host)
    assert config.providers.ollama.base_url == base_url


def test_bad_env_value_names_key_and_variable() -> None:
    """A bad value from the environment names the config key and the variable it came from."""
    with pytest.raises(ConfigError) as caught:
        parse({}, LLM_ES_NATS_URL="http://wrong:4222")
    assert caught.value.key == "nats.url"
    assert "(set by environment variable LLM_ES_NATS_URL)" in str(caught.value)


def test_env_defaults_to_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    """With env=None the process environment is used."""
    for variable in ENV_OVERRIDES:
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("OPENROUTER_API_KEY", "sk-or-process")
    config = parse_config({})
    assert config.providers.openrouter.api_key.reveal() == "sk-or-process"


# --- secrets ---------------------------------------------------------------------------


def test_secret_hides_its_value() -> None:
    """Secret shows '***' (or '' when empty), compares and hashes by value, and is immutable."""
    secret = Secret(SECRET)
    assert secret.reveal() == SECRET
    assert repr(secret) == str(secret) == f"{secret}" == "Secret('***')"
    assert repr(Secret("")) == "Secret('')"
    assert bool(secret) is True
    assert bool(Secret("")) is False
    assert secret == Secret(SECRET)
    assert secret != Secret("other")
    assert secret != SECRET
    assert hash(secret) == hash(Secret(SECRET))
    with pytest.raises(AttributeError):
        secret._value = "x"
    with pytest.raises(TypeError):
        Secret(123)  # type: ignore[arg-type]


def test_secrets_never_appear_in_repr() -> None:
    """repr(config) hides API keys, NATS password/token and passwords inside URLs."""
    config = parse(
        {
            "providers": {
                "openai": {"api_key": SECRET},
                "openrouter": {"api_key": SECRET},
                "ollama": {"base_url": f"http://admin:{SECRET}@gpu-box:11434"},
            },
            "nats": {
                "url": f"nats://bot:{SECRET}@a:4222,nats://{SECRET}@b:4222",
                "user": "bot",
                "password": SECRET,
                "token": SECRET,
            },
        }
    )
    text = repr(config)
    assert SECRET not in text
    assert SECRET not in str(config)
    assert "Secret('***')" in text
    assert "nats://bot:***@a:4222,nats://***@b:4222" in text
    assert "http://admin:***@gpu-box:11434" in text
    assert config.nats.password is not None
    assert config.nats.password.reveal() == SECRET


SECRET_LEAKS = [
    pytest.param({"providers": {"openai": {"api_key": [SECRET]}}}, id="api-key-array"),
    pytest.param({"providers": {"openai": {"api_key": {SECRET: 1}}}}, id="api-key-object"),
    pytest.param({"providers": {"openrouter": {"api_key": SECRET_NUMBER}}}, id="api-key-number"),
    pytest.param({"nats": {"user": "u", "password": SECRET_NUMBER}}, id="nats-password"),
    pytest.param({"nats": {"token": SECRET_NUMBER}}, id="nats-token"),
    pytest.param({"nats": {"password": SECRET}}, id="password-without-user"),
    pytest.param(
        {"providers": {"ollama": {"base_url": f"ftp://admin:{SECRET}@host"}}},
        id="base-url-with-password",
    ),
    pytest.param({"nats": {"url": f"http://bot:{SECRET}@host:4222"}}, id="nats-url-password"),
    pytest.param({"nats": {"url": f"http://{SECRET}@host:4222"}}, id="nats-url-token"),
    pytest.param(
        {"providers": {"openai": {"api_key": SECRET, "max_retries": -1}}},
        id="error-beside-secret",
    ),
]


@pytest.mark.parametrize("raw", SECRET_LEAKS)
def test_secrets_never_appear_in_config_errors(raw: object) -> None:
    """A ConfigError about (or next to) a secret never carries the secret's value."""
    with pytest.raises(ConfigError) as caught:
        parse(raw)
    for text in (str(caught.value), repr(caught.value), caught.value.problem):
        assert SECRET not in text
        assert str(SECRET_NUMBER) not in text


def test_default_config_dict_round_trips_with_blank_secrets() -> None:
    """The sample config parses back to Config() and contains no secret values."""
    data = default_config_dict()
    assert data["providers"]["openai"]["api_key"] == ""  # type: ignore[index]
    assert data["personas"] == {}
    assert parse(data) == Config()
    assert orjson.loads(DEFAULT_CONFIG_JSON) == data


def test_config_reference_documents_every_key() -> None:
    """config_reference() is a Markdown table with a row for every key of the sample config."""

    def leaves(data: dict[str, object], prefix: str = "") -> list[str]:
        keys = []
        for name, value in data.items():
            if isinstance(value, dict) and name != "personas":
                keys.extend(leaves(value, f"{prefix}{name}."))
            else:
                keys.append(f"{prefix}{name}")
        return keys

    reference = config_reference()
    assert reference.startswith("| key | type | default | meaning |\n| --- | --- | --- | --- |\n")
    rows = reference.splitlines()[2:]
    documented = [row.split("|")[1].strip().strip("`") for row in rows]
    expected = [
        "personas.<name>" if key == "personas" else key for key in leaves(default_config_dict())
    ]
    assert documented == expected
    assert all(row.count("|") == 5 for row in rows)
    assert "| `service.max_context_messages` | integer >= 1 | `10` |" in reference


# --- personas --------------------------------------------------------------------------


def test_personas_extend_and_override_the_builtins() -> None:
    """File personas add new names and replace built-in prompts; the rest stay built-in."""
    config = parse(
        {
            "personas": {"pirate": "You talk like a pirate.", "concise": "Be terse."},
            "service": {"default_persona": "pirate"},
        }
    )
    assert config.personas["pirate"] == "You talk like a pirate."
    assert config.personas["concise"] == "Be terse."
    assert config.personas["default"] == BUILTIN_PERSONAS["default"]
    assert list(config.personas) == ["default", "concise", "technical", "creative", "pirate"]
    assert config.service.default_persona == "pirate"


def test_personas_cannot_be_changed_after_parsing() -> None:
    """The personas mapping of a Config is read-only."""
    config = parse({"personas": {"pirate": "Arr"}})
    with pytest.raises(TypeError):
        config.personas["pirate"] = "changed"  # type: ignore[index]


# --- loading files ---------------------------------------------------------------------


async def test_load_config_reads_a_file(tmp_path: Path) -> None:
    """load_config decodes the JSON file at the path and applies env on top."""
    path = tmp_path / "config.json"
    path.write_bytes(orjson.dumps(SEED_CONFIG))
    config = await load_config(path, env={"OPENAI_API_KEY": "sk-env"})
    assert config.default_provider == "openrouter"
    assert config.providers.openai.api_key.reveal() == "sk-env"
    assert config == load_config_sync(str(path), env={"OPENAI_API_KEY": "sk-env"})


async def test_load_config_without_a_path_gives_defaults() -> None:
    """load_config(None) is the default config plus the environment."""
    assert await load_config(None, env={}) == Config()
    assert load_config_sync(None, env={}) == Config()


async def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    """A missing file fails with a ConfigError naming the path."""
    path = tmp_path / "absent.json"
    with pytest.raises(ConfigError) as caught:
        await load_config(path, env={})
    assert caught.value.key == str(path)
    assert caught.value.problem == "config file not found"


async def test_unreadable_file_is_a_config_error(tmp_path: Path) -> None:
    """A path that cannot be read (here a directory) fails with a ConfigError naming it."""
    with pytest.raises(ConfigError) as caught:
        await load_config(tmp_path, env={})
    assert caught.value.key == str(tmp_path)
    assert caught.value.problem.startswith("cannot read config file: ")


@pytest.mark.parametrize(
    ("content", "position"),
    [
        (b'{\n  "name": "llm",\n  "enabled": tru\n}', "line 3 column"),
        (b'{"name": "llm",}', "line 1 column"),
        (b"", "line 1 column 1"),
    ],
)
def test_invalid_json_names_file_and_position(
    tmp_path: Path, content: bytes, position: str
) -> None:
    """Undecodable JSON fails with a ConfigError naming the file and the line/column."""
    path = tmp_path / "config.json"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as caught:
        load_config_sync(path, env={})
    assert caught.value.key == str(path)
    assert caught.value.problem.startswith("invalid JSON: ")
    assert position in caught.value.problem


def test_top_level_array_file_is_rejected(tmp_path: Path) -> None:
    """A file whose JSON is not an object is rejected."""
    path = tmp_path / "config.json"
    path.write_bytes(b"[1, 2]")
    with pytest.raises(ConfigError, match="expected a JSON object"):
        load_config_sync(path, env={})
