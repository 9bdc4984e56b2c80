"""Request bytes -> a checked msgspec Struct, or a `ValidationError` in the project's words.

msgspec decodes and type-checks a body in one pass, from the types and ranges the
`Payload` classes of `requests.py` declare. Its error ("Expected `str`, got `int` -
at `$.user`") is reworded here into the texts the surfaces answer ("Field 'user'
must be a string, got a number"), the expectation read off the declared type. The
limits of the runtime config (name and message lengths) are checked after
decoding, on the fields typed `Name` and `Text`. No error text repeats a value of
the request, only its JSON kind.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, TypeVar

import msgspec
from msgspec import Meta, inspect

from llm_es.config import Config
from llm_es.domain.tokens import MAX_TOKEN_CHARS, name_too_long, token_length
from llm_es.errors import ValidationError

Name = Annotated[str, Meta(extra={"limit": "name"})]
"""A channel or user name: not blank, at most `service.max_name_length` characters, and a
subject token of at most `MAX_TOKEN_CHARS`."""
Text = Annotated[str, Meta(extra={"limit": "text"})]
"""A message: not blank, at most `service.max_message_length` characters."""

_LIMITED: dict[type[Any], tuple[tuple[str, ...], tuple[str, ...]]] = {}
_PATH_STEP = re.compile(r"\.([^.\[]+)|\[(\d+)\]")
_MISSING = re.compile(r"Object missing required field `(.+)`")
_PLURAL = re.compile(r"(string|object)")
_GOT = re.compile(r"Expected `.+`, got `(\w+)`")
_KINDS = {"int": "a number", "float": "a number", "str": "a string", "bool": "a boolean",
          "null": "null", "array": "an array", "object": "an object"}  # fmt: skip
ALWAYS_FITS_CHARS = MAX_TOKEN_CHARS // 12
"""Names this short always fit a subject token: a character encodes to at most 12."""
_KIND_OF = {list: "array", str: "str", int: "int", float: "float", bool: "bool", type(None): "null"}
"""msgspec's name for the JSON kind of a decoded value (a top-level body)."""


class Payload(msgspec.Struct, frozen=True):
    """A request body. Fields it does not declare are ignored (the seed's clients may send
    more); an optional field given as null is unset, as in the seed's `asdict(...)`."""

    def check(self, config: Config) -> None:
        """The `Name` and `Text` fields against the config's limits; errors name the field."""
        names, texts = _LIMITED.get(type(self)) or _limited_fields(type(self))
        # One test for the usual case (a request per turn); the helper words a failure.
        most = min(config.service.max_name_length, ALWAYS_FITS_CHARS)
        for field in names:
            value = getattr(self, field)
            if value is not None and (len(value) > most or not value.strip()):
                check_name(field, value, config)
        most = config.service.max_message_length
        for field in texts:
            value = getattr(self, field)
            if value is not None and (len(value) > most or not value.strip()):
                check_text(field, value, config)


PayloadT = TypeVar("PayloadT", bound=Payload)


def decode_request(data: bytes, kind: type[PayloadT], config: Config) -> PayloadT:
    """`data` as a `kind`, its types and the config's limits checked."""
    try:
        request = msgspec.json.decode(data, type=kind)
    except msgspec.ValidationError as error:
        raise _reworded(error, data, kind) from None
    except (msgspec.DecodeError, RecursionError) as error:
        raise invalid_json(error) from None
    request.check(config)
    return request


def loose_object(data: bytes) -> dict[str, Any]:
    """The payload as an untyped JSON object, or `{}`: what an error answer may echo from."""
    try:
        body = msgspec.json.decode(data)
    except (msgspec.DecodeError, RecursionError):
        return {}
    return body if isinstance(body, dict) else {}


def invalid_json(error: Exception) -> ValidationError:
    # Nesting past Python's recursion limit is a RecursionError from msgspec, not a DecodeError.
    reason = "nested too deeply" if isinstance(error, RecursionError) else str(error)
    return ValidationError(f"Invalid JSON: {reason}")


def required(field: str, value: str | None) -> str:
    """`value`, or a ValidationError when the payload left it out (null counts as left out)."""
    if value is None:
        raise ValidationError(f"Missing field '{field}'", field)
    return value


def check_name(field: str, value: str, config: Config) -> None:
    if not value.strip():
        raise ValidationError(f"Field '{field}' must not be empty", field)
    limit = config.service.max_name_length
    if len(value) > limit:
        raise ValidationError(
            f"Field '{field}' is too long: {len(value)} characters (limit {limit})", field
        )
    if len(value) > ALWAYS_FITS_CHARS and (chars := token_length(value)) > MAX_TOKEN_CHARS:
        raise ValidationError(name_too_long(chars, field), field)


def check_text(field: str, value: str, config: Config, *, blank: bool = False) -> None:
    limit = config.service.max_message_length
    if len(value) > limit:
        raise ValidationError(f"Message too long: {len(value)} characters (limit {limit})", field)
    if not blank and not value.strip():
        raise ValidationError(f"Field '{field}' must not be empty", field)


def _limited_fields(cls: type[Payload]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The fields of `cls` typed `Name`, and those typed `Text` (optionals included)."""
    info = inspect.type_info(cls)
    assert isinstance(info, inspect.StructType)
    limits = {
        field.name: arm.extra["limit"]
        for field in info.fields
        for arm in (field.type.types if isinstance(field.type, inspect.UnionType) else [field.type])
        if isinstance(arm, inspect.Metadata) and arm.extra and "limit" in arm.extra
    }
    found = (
        tuple(f for f, limit in limits.items() if limit == "name"),
        tuple(f for f, limit in limits.items() if limit == "text"),
    )
    _LIMITED[cls] = found
    return found


def _reworded(error: msgspec.ValidationError, data: bytes, kind: type[Payload]) -> ValidationError:
    """msgspec's complaint about `data` as the texts the surfaces have always answered."""
    # msgspec stops at the first wrong field, maybe before a syntax error further on: a
    # malformed body is answered as such, as orjson (which parsed everything first) did.
    try:
        body = msgspec.json.decode(data)
    except (msgspec.DecodeError, RecursionError) as malformed:
        return invalid_json(malformed)
    if not isinstance(body, dict):
        kind_of_body = _KINDS[_KIND_OF[type(body)]]
        return ValidationError(f"Payload must be a JSON object, got {kind_of_body}")
    message, _, where = str(error).partition(" - at `$")
    path = [name or int(index) for name, index in _PATH_STEP.findall(where.rstrip("`"))]
    if missing := _MISSING.fullmatch(message):
        path.append(missing[1])
        return ValidationError(f"Missing field '{_dotted(path)}'", str(path[0]))
    expected, reached = _expected_at(kind, path)
    field, got = _dotted(path[:reached]), _GOT.fullmatch(message)
    if got and got[1] == "null" and len(path) == 1:
        return ValidationError(f"Missing field '{field}'", field)  # null is unset, as ever
    text = f"Field '{field}' must be {' or '.join(map(_describe, expected))}"
    if got and reached == len(path):  # inside a union the kind would be of a part of it
        text += f", got {_KINDS.get(got[1], got[1])}"
    return ValidationError(text, str(path[0]) if path else None)


def _expected_at(kind: type[Payload], path: list[str | int]) -> tuple[Any, int]:
    """The declared type at `path`, and how many steps reach it: a union is named whole
    (`args` is "a string or a list of strings", not the list's item)."""
    node: Any = inspect.type_info(kind)
    for reached, step in enumerate(path):
        arms = _union_arms(node)
        if len(arms) > 1:
            return arms, reached
        node = arms[0]
        if isinstance(node, inspect.ListType):
            node = node.item_type
        elif isinstance(node, inspect.StructType | inspect.TypedDictType):
            node = {field.name: field.type for field in node.fields}[str(step)]
    return _union_arms(node), len(path)


def _union_arms(node: Any) -> list[Any]:
    """The types `node` takes, without metadata, and without null: "unset", never worth saying."""
    arms = node.types if isinstance(node, inspect.UnionType) else (node,)
    bare = [arm.type if isinstance(arm, inspect.Metadata) else arm for arm in arms]
    return [arm for arm in bare if not isinstance(arm, inspect.NoneType)]


def _describe(node: Any) -> str:
    """What a declared type takes, in words: 'an integer between 1 and 5', ..."""
    if isinstance(node, inspect.StrType):
        text = "a non-empty string" if node.min_length or node.pattern else "a string"
        return f"{text} of at most {node.max_length} characters" if node.max_length else text
    if isinstance(node, inspect.IntType | inspect.FloatType):
        noun = "an integer" if isinstance(node, inspect.IntType) else "a number"
        if node.ge is None or node.le is None:
            return noun
        # Bounds are declared as a caller writes them (`le=2`, not `le=2.0`).
        return f"{noun} between {node.ge} and {node.le}"
    if isinstance(node, inspect.BoolType):
        return "true or false"
    if isinstance(node, inspect.LiteralType):
        return "one of: " + ", ".join(map(str, node.values))
    if isinstance(node, inspect.ListType):
        count = f"{node.min_length} to {node.max_length} " if node.max_length else ""
        # "a string" -> "strings", "an object {role, content}" -> "objects {role, content}"
        item = _PLURAL.sub(r"\1s", _describe(node.item_type).split(" ", 1)[1], count=1)
        return f"a list of {count}{item}"
    if isinstance(node, inspect.StructType | inspect.TypedDictType):
        # In declaration order (msgspec sorts a TypedDict's fields): `{role, content}`.
        return "an object {" + ", ".join(node.cls.__annotations__) + "}"
    return "an object"


def _dotted(path: list[str | int]) -> str:
    """`messages[0].role` from its steps."""
    return "".join(f"[{s}]" if isinstance(s, int) else f".{s}" for s in path).removeprefix(".")
