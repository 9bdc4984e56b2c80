"""The config's documentation, generated from the schema: the sample config.json and the
README's key table (a test keeps the README's copy equal to `config_reference()`)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import msgspec
from msgspec import inspect

from llm_es.config._describe import describe, field_types, meaning, unwrap
from llm_es.config._schema import Config
from llm_es.config._secret import Secret
from llm_es.config.personas import BUILTIN_PERSONAS


def _blank_secrets(value: object) -> object:
    """msgspec's encode hook: a secret is written as "", so it never reaches a sample or a doc."""
    if isinstance(value, Secret):
        return ""
    if isinstance(value, Mapping):  # the personas' read-only MappingProxyType
        return dict(value)
    raise NotImplementedError(f"cannot encode {type(value).__name__}")


def _to_json(value: object) -> str:
    return msgspec.json.encode(value, enc_hook=_blank_secrets).decode()


def default_config_dict() -> dict[str, object]:
    """The default config as a JSON-able dict (a sample config.json), secrets blanked."""
    data: dict[str, object] = msgspec.json.decode(_to_json(Config()))
    # Built-ins are always present; the file only lists additions and overrides.
    data["personas"] = {}
    return data


DEFAULT_CONFIG_JSON: str = msgspec.json.format(_to_json(default_config_dict()), indent=2)
"""The default config as pretty-printed JSON, for `llm-es` to print as a sample."""


def _reference_rows(cls: type[Any], prefix: str) -> Iterator[tuple[str, str, str, str]]:
    defaults = cls()
    for name, kind in field_types(cls).items():
        key = f"{prefix}{name}"
        section = unwrap(kind)
        if isinstance(section, inspect.DataclassType):
            yield from _reference_rows(section.cls, f"{key}.")
        elif cls is Config and name == "personas":
            builtins = ", ".join(f"`{persona}`" for persona in BUILTIN_PERSONAS)
            yield (
                "personas.<name>",
                "non-empty string",
                f"built-ins: {builtins}",
                "System prompt of persona `<name>` (1-32 of `a-z0-9_-`); adds a persona "
                "or replaces a built-in one.",
            )
        else:
            kind_text = describe(kind).removeprefix("an ").removeprefix("a ")
            yield key, kind_text, f"`{_to_json(getattr(defaults, name))}`", meaning(kind)


def config_reference() -> str:
    """Every config key as a Markdown table: key | type | default | meaning."""
    lines = ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
    for key, kind, default, meaning_text in _reference_rows(Config, ""):
        lines.append(f"| `{key}` | {kind} | {default} | {meaning_text} |".replace("\n", " "))
    return "\n".join(lines) + "\n"
