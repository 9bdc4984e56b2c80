"""What a config key expects, read off the schema's types with `msgspec.inspect`.

The README table and the error messages both say what a key takes ("an integer >= 1
or null"); both get the words here, so the two never disagree. The schema marks URL
keys with `Meta(extra={"url": "http" | "nats"})` and documents every key with
`Meta(description=...)`.
"""

from __future__ import annotations

import types
from collections.abc import Mapping
from typing import Any, Literal

from msgspec import inspect

from llm_es.config._secret import Secret

UrlKind = Literal["http", "nats"]


_FIELD_TYPES: dict[type[Any], Mapping[str, inspect.Type]] = {}


def field_types(cls: type[Any]) -> Mapping[str, inspect.Type]:
    """The msgspec type of each field of the dataclass `cls`, by name, in field order."""
    # Memoized by hand: functools.cache wants a Hashable, which mypy denies a class.
    found = _FIELD_TYPES.get(cls)
    if found is None:
        info = inspect.type_info(cls)
        assert isinstance(info, inspect.DataclassType)
        found = types.MappingProxyType({field.name: field.type for field in info.fields})
        _FIELD_TYPES[cls] = found
    return found


def unwrap(kind: inspect.Type) -> inspect.Type:
    """`kind` without its `Annotated` metadata."""
    while isinstance(kind, inspect.Metadata):
        kind = kind.type
    return kind


def _not_null_arm(union: inspect.UnionType) -> inspect.Type:
    """The arm of `X | None` that is not None (the schema's only unions are optionals)."""
    (arm,) = [arg for arg in union.types if not isinstance(arg, inspect.NoneType)]
    return arm


def without_null(kind: inspect.Type) -> inspect.Type:
    """The type an optional (`X | None`) key takes when it is not null, unwrapped."""
    kind = unwrap(kind)
    if isinstance(kind, inspect.UnionType):
        kind = _not_null_arm(kind)
    return unwrap(kind)


def meaning(kind: inspect.Type) -> str:
    """The key's `Meta(description=...)`: the README's meaning column."""
    if isinstance(kind, inspect.Metadata) and kind.extra_json_schema:
        return str(kind.extra_json_schema["description"])
    return ""


def url_kind(kind: inspect.Type) -> UrlKind | None:
    """Which URL check a key gets, from its `Meta(extra={"url": ...})`; None: not a URL."""
    while True:
        if isinstance(kind, inspect.Metadata):
            if kind.extra and "url" in kind.extra:
                found: UrlKind = kind.extra["url"]
                return found
            kind = kind.type
        elif isinstance(kind, inspect.UnionType):
            kind = _not_null_arm(kind)
        else:
            return None


def holds_secret(kind: inspect.Type) -> bool:
    """Whether the key holds a `Secret`, whose given value must never be echoed."""
    kind = without_null(kind)
    return isinstance(kind, inspect.CustomType) and kind.cls is Secret


def bounds(kind: inspect.Type) -> str:
    """The range a number key allows, e.g. '>= 1', '> 0', 'between 0 and 2'; '' for none."""
    kind = without_null(kind)
    if not isinstance(kind, inspect.IntType | inspect.FloatType):
        return ""
    if kind.ge is not None and kind.le is not None:
        return f"between {kind.ge:g} and {kind.le:g}"
    if kind.gt is not None:
        return f"> {kind.gt:g}"
    if kind.ge is not None:
        return f">= {kind.ge:g}"
    if kind.le is not None:
        return f"<= {kind.le:g}"
    return ""


def describe(kind: inspect.Type) -> str:
    """What a key takes, in words: 'an integer >= 1 or null', 'an http(s) URL', ..."""
    url = url_kind(kind)
    kind = unwrap(kind)
    if isinstance(kind, inspect.UnionType):
        return f"{describe(_not_null_arm(kind))} or null"
    if url == "http":
        return "an http(s) URL"
    if url == "nats":
        return "NATS server URL(s)"
    if isinstance(kind, inspect.VarTupleType):
        return f"a list of {describe(kind.item_type)}"
    if isinstance(kind, inspect.IntType):
        return f"an integer {bounds(kind)}".rstrip()
    if isinstance(kind, inspect.FloatType):
        return f"a number {bounds(kind)}".rstrip()
    if isinstance(kind, inspect.BoolType):
        return "a boolean"
    if isinstance(kind, inspect.LiteralType):
        return "one of " + ", ".join(f'"{choice}"' for choice in kind.values)
    if isinstance(kind, inspect.StrType):
        # The schema spells "not blank" as pattern \S; no other pattern is used.
        return "a non-empty string" if kind.pattern else "a string"
    if holds_secret(kind):
        return "a string (secret)"
    if isinstance(kind, inspect.DataclassType | inspect.DictType):
        return "an object"
    return str(kind)
