"""Decoded JSON -> `Config`: msgspec converts and type-checks, this module names the key.

`msgspec.convert(..., strict=True)` does the type and range checks the schema's types
declare; its `ValidationError` ("Expected `int` >= 1 - at `$.service.max_tokens`") is
turned into `ConfigError(key, problem)`, with the expectation worded from the schema and
the given value shown (secrets only by kind, URLs with their passwords redacted). What
msgspec does not check is checked here by hand: unknown keys (it ignores them in
dataclasses; we name a close match), personas, URLs, finite numbers, and the rules that
tie two keys together.

Choices worth knowing:
- Integers must be JSON integers: `10.0` and `true` are rejected for an integer key.
  Numbers (timeouts, temperatures) accept integers and floats, never booleans.
- Unknown keys are errors, so a typo cannot silently fall back to a default.
- `base_url` values must be http(s) URLs; a trailing `/` is removed.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
from collections.abc import Mapping
from typing import Any
from urllib.parse import SplitResult, urlsplit

import msgspec
from msgspec import inspect

from llm_es.config._describe import (
    bounds,
    describe,
    field_types,
    holds_secret,
    unwrap,
    url_kind,
    without_null,
)
from llm_es.config._schema import (
    LISTEN_EXPECTED,
    PERSONA_NAME_PATTERN,
    SUBJECT_PREFIX_PATTERN,
    Config,
    listen_address,
)
from llm_es.config._secret import Secret, redact_url
from llm_es.config.personas import BUILTIN_PERSONAS
from llm_es.errors import ConfigError

_NATS_SCHEMES = frozenset({"nats", "tls", "ws", "wss"})
_NATS_EXPECTED = "NATS server URL(s), comma-separated (nats://, tls://, ws://, wss:// or host:port)"
# msgspec words a failed constraint "Expected `int` >= 1" or "Expected `str` matching
# regex '\\S'"; a wrong type is "Expected `int`, got `str`" or "Invalid enum value ...".
_CONSTRAINT = re.compile(r"Expected `\w+` (?:[<>]=?|matching regex) ")
_PATH_STEP = re.compile(r"\.([^.\[]+)|\[(\d+)\]")
_KINDS: tuple[tuple[type | tuple[type, ...], str], ...] = (
    (type(None), "null"),
    (bool, "a boolean"),  # before int: a bool is an int to isinstance
    (int, "an integer"),
    (float, "a number"),
    (str, "a string"),
    (dict, "an object"),
    ((list, tuple), "an array"),
)


def build_config(raw: object) -> Config:
    """Check decoded JSON `raw` and build the `Config`; a `ConfigError` names the first bad key."""
    if not isinstance(raw, dict):
        raise ConfigError("(top level)", f"expected a JSON object, got {show(raw)}")
    _check_keys(Config, raw, "")
    personas = _parse_personas(raw.get("personas", {}))
    others = {name: value for name, value in raw.items() if name != "personas"}
    try:
        config = msgspec.convert(others, type=Config, strict=True, dec_hook=_decode_secret)
    except msgspec.ValidationError as error:
        raise _config_error(error, others) from None
    checked: Config = _check_values(config, "")
    config = dataclasses.replace(checked, personas=personas)
    _check_cross_fields(config)
    return config


def _decode_secret(kind: type, value: object) -> object:
    """msgspec's hook for the one type it does not know; the message never holds the value."""
    if kind is Secret and isinstance(value, str):
        return Secret(value)
    raise TypeError(f"expected a string for {kind.__name__}")  # reworded by _config_error


def _check_keys(cls: type[Any], raw: Mapping[object, object], prefix: str) -> None:
    """Unknown keys, nested ones too, fail with a near miss named; msgspec ignores them."""
    kinds = field_types(cls)
    for name, value in raw.items():
        kind = kinds.get(name) if isinstance(name, str) else None
        if kind is None:
            problem = "unknown key"
            if isinstance(name, str) and (close := difflib.get_close_matches(name, kinds, n=1)):
                problem += f" (did you mean '{close[0]}'?)"
            raise ConfigError(f"{prefix}{name}", f"{problem}; known keys: {', '.join(kinds)}")
        section = unwrap(kind)
        if isinstance(section, inspect.DataclassType) and isinstance(value, dict):
            _check_keys(section.cls, value, f"{prefix}{name}.")


def _parse_personas(raw: object) -> Mapping[str, str]:
    """The built-in personas plus the file's; checked here so an error names the persona."""
    if not isinstance(raw, dict):
        raise ConfigError("personas", f"expected an object (name -> prompt), got {show(raw)}")
    if not raw:
        return BUILTIN_PERSONAS
    personas = dict(BUILTIN_PERSONAS)
    for name, prompt in raw.items():
        key = f"personas.{name}"
        if not isinstance(name, str) or not PERSONA_NAME_PATTERN.fullmatch(name):
            raise ConfigError(
                key,
                "invalid persona name; use 1-32 of a-z, 0-9, '_' and '-', "
                "starting with a letter or digit",
            )
        if not isinstance(prompt, str) or not prompt.strip():
            raise ConfigError(key, f"expected a non-empty system prompt, got {show(prompt)}")
        personas[name] = prompt
    return types.MappingProxyType(personas)


def _config_error(error: msgspec.ValidationError, raw: dict[str, object]) -> ConfigError:
    """msgspec's error as a `ConfigError`: the dotted key, what it takes, what it got."""
    message, at, path = str(error).rpartition(" - at `$")
    if not at:  # no path: cannot happen below a dict, which build_config checked
        return ConfigError("(top level)", str(error))
    steps = [name or int(index) for name, index in _PATH_STEP.findall(path.rstrip("`"))]
    key = "".join(f"[{step}]" if isinstance(step, int) else f".{step}" for step in steps)
    key = key.removeprefix(".") or "(top level)"
    try:
        kind, value = _follow(steps, raw)
    except (KeyError, IndexError, TypeError, ValueError):
        # A message this module does not know how to read: msgspec's own words, which
        # never hold a value except an enum's (never a secret).
        return ConfigError(key, message[:1].lower() + message[1:])
    if _CONSTRAINT.match(message):
        if isinstance(value, str):
            return ConfigError(key, f"expected {describe(kind)}, got an empty string")
        return ConfigError(key, f"must be {bounds(kind)}, got {show(value)}")
    if holds_secret(kind):
        return ConfigError(key, f"expected {describe(kind)}, got {_kind(value)}")
    if url_kind(kind) and isinstance(value, str):
        value = redact_url(value)
    return ConfigError(key, f"expected {describe(kind)}, got {show(value)}")


def _follow(steps: list[str | int], raw: dict[str, object]) -> tuple[inspect.Type, object]:
    """The schema type and the given value at a msgspec error's path."""
    kind: inspect.Type = inspect.type_info(Config)
    value: Any = raw
    for step in steps:
        if isinstance(step, int):
            items = without_null(kind)
            if not isinstance(items, inspect.VarTupleType):
                raise TypeError(step)
            kind = items.item_type
        else:
            section = unwrap(kind)
            if not isinstance(section, inspect.DataclassType):
                raise TypeError(step)
            kind = field_types(section.cls)[step]
        value = value[step]
    return kind, value


def _check_values(section: Any, prefix: str) -> Any:
    """`section` with URLs checked and normalized, and numbers checked finite (no Meta says so)."""
    changes = {}
    for name, kind in field_types(type(section)).items():
        key, value = f"{prefix}{name}", getattr(section, name)
        if dataclasses.is_dataclass(value):
            changes[name] = _check_values(value, f"{key}.")
        elif isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(key, f"expected a finite number, got {show(value)}")
        elif isinstance(value, str) and (url := url_kind(kind)):
            changes[name] = _http_url(value, key) if url == "http" else _nats_urls(value, key)
    return dataclasses.replace(section, **changes)


def _http_url(value: str, key: str) -> str:
    value = value.strip().rstrip("/")
    parts = _split_url(value)
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(key, f"expected an http(s) URL, got {show(redact_url(value))}")
    return value


def _nats_urls(value: str, key: str) -> str:
    servers = [server.strip() for server in value.split(",")]
    for server in servers:
        parts = _split_url(server if "://" in server else f"nats://{server}")
        if parts is None or not parts.hostname or parts.scheme not in _NATS_SCHEMES:
            raise ConfigError(key, f"expected {_NATS_EXPECTED}, got {show(redact_url(value))}")
    return ",".join(servers)


def _split_url(url: str) -> SplitResult | None:
    """`url` split into parts; None when it cannot be parsed (a bad port, say)."""
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises ValueError for a bad port
    except ValueError:
        return None
    return parts


def _check_cross_fields(config: Config) -> None:
    """The rules that tie keys together, which no single key's type can state."""
    fallbacks = config.fallback_providers
    if len(set(fallbacks)) != len(fallbacks):
        expected = describe(field_types(Config)["fallback_providers"])
        raise ConfigError(
            "fallback_providers", f"expected {expected} without repeats, got an array"
        )
    if config.service.default_persona not in config.personas:
        raise ConfigError(
            "service.default_persona",
            f"unknown persona {config.service.default_persona!r}; "
            f"known personas: {', '.join(config.personas)}",
        )
    listen = config.http.listen
    if listen is not None and listen_address(listen) is None:
        raise ConfigError("http.listen", f"{LISTEN_EXPECTED}, got {show(listen)}")
    nats = config.nats
    prefixes = {
        f"service.reply_prefixes[{index}]": prefix
        for index, prefix in enumerate(config.service.reply_prefixes)
    }
    if nats.inbox_prefix is not None:
        prefixes["nats.inbox_prefix"] = nats.inbox_prefix
    for key, prefix in prefixes.items():
        if not SUBJECT_PREFIX_PATTERN.fullmatch(prefix):
            raise ConfigError(
                key,
                "expected a subject prefix of plain tokens (no wildcards, no leading $),"
                f" got {show(prefix)}",
            )
    if (nats.user is None) != (nats.password is None):
        missing = "nats.password" if nats.password is None else "nats.user"
        raise ConfigError(missing, "required when the other of nats.user/nats.password is set")
    if (nats.tls_cert is None) != (nats.tls_key is None):
        missing = "nats.tls_key" if nats.tls_key is None else "nats.tls_cert"
        raise ConfigError(missing, "required when the other of nats.tls_cert/nats.tls_key is set")


def show(value: object) -> str:
    """A short, JSON-flavoured rendering of a (non-secret) value for error messages."""
    if isinstance(value, dict | list | tuple):
        return _kind(value)
    try:
        # JSON has no inf or nan (msgspec would write null); a Python caller may pass them.
        finite = not isinstance(value, float) or math.isfinite(value)
        text = msgspec.json.encode(value).decode() if finite else repr(value)
    except TypeError:
        text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} ({_kind(value).removeprefix('a ').removeprefix('an ')})"


def _kind(value: object) -> str:
    """What sort of JSON value `value` is, without the value itself (safe for secrets)."""
    for kinds, word in _KINDS:
        if isinstance(value, kinds):
            return word
    return f"a {type(value).__name__}"
