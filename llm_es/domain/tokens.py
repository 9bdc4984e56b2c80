"""Reversible encoding of channel and user names into NATS subject / KV key tokens.

Names are arbitrary text. `[A-Za-z0-9_-]` stays readable; every other byte of
the UTF-8 form becomes `=XX` (upper-case hex), so `=` itself is escaped and the
encoding is injective. The result is a valid subject token and a valid KV key
part. The name `_` is escaped too: a bare `_` means "no channel / no user".
"""

from __future__ import annotations

import re

from llm_es.errors import ValidationError

NO_NAME = "_"
"""Subject token for events that have no channel or no user."""

_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
_ESCAPE = re.compile(r"=([0-9A-F]{2})")
_TOKEN = re.compile(r"(?:[A-Za-z0-9_-]|=[0-9A-F]{2})+")
# One C-level match instead of a per-byte loop: names are encoded several times a turn.
_READABLE = re.compile(r"[A-Za-z0-9_-]+", re.ASCII)


def encode_name(name: str) -> str:
    """Encode a non-empty name as a token; `_` is escaped so it never means "none"."""
    if not name:
        raise ValidationError("name must not be empty")
    if name == NO_NAME:
        return "=5F"
    if _READABLE.fullmatch(name):
        return name
    try:
        raw = name.encode()
    except UnicodeEncodeError as exc:  # lone surrogates, e.g. from undecodable argv bytes
        raise ValidationError(f"name is not valid Unicode text: {name!r}") from exc
    return "".join(chr(b) if b in _SAFE else f"={b:02X}" for b in raw)


def decode_name(token: str) -> str | None:
    """Invert `encode_name`; the no-name token `_` decodes to None."""
    if token == NO_NAME:
        return None
    if not _TOKEN.fullmatch(token):
        raise ValueError(f"not an encoded name token: {token!r}")
    if "=" not in token:
        return token
    raw = bytearray()
    position = 0
    for match in _ESCAPE.finditer(token):
        raw += token[position : match.start()].encode()
        raw.append(int(match.group(1), 16))
        position = match.end()
    raw += token[position:].encode()
    name = raw.decode()
    # Only the canonical token of a name decodes, so one name never has two subjects.
    if encode_name(name) != token:
        raise ValueError(f"not the canonical token of {name!r}: {token!r}")
    return name


def encode_optional(name: str | None) -> str:
    """Token for a name that may be absent (None -> `_`)."""
    return NO_NAME if name is None else encode_name(name)
