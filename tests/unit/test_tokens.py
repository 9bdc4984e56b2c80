"""Tests of llm_es.domain.tokens: names <-> subject tokens, reversible, injective, always valid."""

from __future__ import annotations

import random
import re

import pytest

from llm_es.domain.tokens import (
    MAX_TOKEN_CHARS,
    NO_NAME,
    decode_name,
    encode_name,
    encode_optional,
    token_length,
)
from llm_es.errors import ValidationError

NATS_TOKEN = re.compile(r"[^\s.*>]+")
"""A NATS subject token: non-empty, no whitespace, no `.`, no wildcards."""

KV_KEY = re.compile(r"[-/_=.a-zA-Z0-9]+")
"""Characters JetStream KV allows in a key."""

READABLE = re.compile(r"[A-Za-z0-9_-]+")

SPECIAL_NAMES = [
    "general",
    "a.b",
    "a b",
    " leading",
    "trailing ",
    "tab\there",
    "new\nline",
    "*",
    ">",
    "a.*.>",
    "=",
    "==",
    "=5F",
    "=3D",
    "a=b",
    "_",
    "__",
    "_x",
    "x_",
    "-",
    "/",
    "%41",
    "Ünïcödé",
    "日本語チャンネル",
    "🎉",
    "rosey🤖bot",
    "👨‍👩‍👧",
    "\x00",
    "\u200b",
    "CamelCase-with_dash",
]

ALPHABET = (
    "abcXYZ019_-"  # kept readable
    ".*> =\t\n/\\%$#@!?'\""  # subject syntax, whitespace, punctuation
    "éÜßñ"  # Latin-1 range
    "中文日本語한국어"  # CJK
    "🎉🤖👍🏽\u200d"  # emoji, skin tone modifier, zero-width joiner
    "\x00\x7f"  # control characters
)


def random_name(rng: random.Random) -> str:
    """A non-empty name: mostly from ALPHABET, sometimes any non-surrogate code point."""
    length = rng.randint(1, 24)
    chars = []
    for _ in range(length):
        if rng.random() < 0.15:
            code = rng.randint(1, 0x10FFFF)
            if 0xD800 <= code <= 0xDFFF:  # lone surrogates are not text
                code = 0x41
            chars.append(chr(code))
        else:
            chars.append(rng.choice(ALPHABET))
    return "".join(chars)


def assert_valid_token(token: str) -> None:
    assert token, "a token is never empty"
    assert NATS_TOKEN.fullmatch(token), f"not a NATS subject token: {token!r}"
    assert KV_KEY.fullmatch(token), f"not valid in a KV key: {token!r}"
    assert "." not in token, "a token must not split a KV key or subject"
    assert token != NO_NAME, "a name must never encode to the no-name token"


@pytest.mark.parametrize("name", SPECIAL_NAMES)
def test_special_names_round_trip_to_valid_tokens(name: str) -> None:
    """Dots, spaces, wildcards, `=`, `_`, unicode and emoji decode back to the same name."""
    token = encode_name(name)
    assert_valid_token(token)
    assert decode_name(token) == name


def test_generated_names_round_trip_and_never_collide() -> None:
    """Over many seeded random names: round trip, valid tokens, and distinct names stay distinct."""
    rng = random.Random(20240517)
    owner_of: dict[str, str] = {}
    for _ in range(3000):
        name = random_name(rng)
        token = encode_name(name)
        assert_valid_token(token)
        assert decode_name(token) == name
        previous = owner_of.setdefault(token, name)
        assert previous == name, f"{previous!r} and {name!r} share token {token!r}"
    assert len(owner_of) > 2500  # the generator really produced many different names


def test_readable_names_stay_readable() -> None:
    """Names made only of `[A-Za-z0-9_-]` (other than `_`) are their own token."""
    for name in ("general", "Alice", "user_42", "dev-ops", "__", "a_", "0"):
        assert READABLE.fullmatch(name)
        assert encode_name(name) == name


def test_escapes_are_equals_and_upper_case_hex_of_utf8_bytes() -> None:
    """Every other byte of the UTF-8 form becomes `=XX`; `=` itself is escaped."""
    assert encode_name("a.b") == "a=2Eb"
    assert encode_name("a b") == "a=20b"
    assert encode_name("=") == "=3D"
    assert encode_name("é") == "=C3=A9"
    assert encode_name("🎉") == "=F0=9F=8E=89"


def test_underscore_alone_is_escaped_and_distinct_from_no_name() -> None:
    """`_` as a name encodes to `=5F`; the bare `_` token decodes to None."""
    assert encode_name("_") == "=5F"
    assert decode_name("=5F") == "_"
    assert decode_name(NO_NAME) is None
    assert encode_optional(None) == NO_NAME
    assert encode_optional("_") == "=5F"
    assert encode_optional("general") == "general"


def test_empty_name_is_rejected() -> None:
    """An empty name raises ValidationError; it is never mapped to `_`."""
    with pytest.raises(ValidationError):
        encode_name("")
    with pytest.raises(ValidationError):
        encode_optional("")


def test_lone_surrogate_is_rejected_as_validation_error() -> None:
    """A name that is not valid Unicode text (lone surrogate) raises ValidationError."""
    with pytest.raises(ValidationError):
        encode_name("bad\ud800name")


@pytest.mark.parametrize(
    "token",
    [
        "",
        "a.b",
        "a b",
        "*",
        ">",
        "=",
        "=4",
        "=5f",  # escapes are upper-case hex
        "=GG",
        "=41",  # "A" is written as itself, never escaped
        "=FF",  # not UTF-8
        "é",
    ],
)
def test_decode_rejects_tokens_encode_never_produces(token: str) -> None:
    """Only canonical tokens decode, so no name has two tokens; the rest raise ValueError."""
    with pytest.raises(ValueError, match=r"."):
        decode_name(token)


@pytest.mark.parametrize("name", ["a" * MAX_TOKEN_CHARS, "\U0001f600" * 128, "é" * 256])
def test_the_longest_names_fit_a_token(name: str) -> None:
    """A name whose token is exactly `MAX_TOKEN_CHARS` long encodes; 128 characters always fit."""
    assert len(encode_name(name)) == token_length(name) == MAX_TOKEN_CHARS


@pytest.mark.parametrize("name", ["a" * (MAX_TOKEN_CHARS + 1), "\U0001f600" * 129, "é." * 200])
def test_a_name_too_long_for_a_subject_is_refused(name: str) -> None:
    """Past `MAX_TOKEN_CHARS` the encoder refuses (the surfaces check first and name the
    field), so no subject can pass the server's control-line limit."""
    with pytest.raises(ValidationError, match="too long for a NATS subject"):
        encode_name(name)
