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

MAX_TOKEN_CHARS = 1536
"""Longest token a name may encode to: 128 characters of four UTF-8 bytes each. A subject
holds at most two names (`llm.ev.<channel>.<user>.<Type>`, also inside a direct-get API
subject), so with a reply inbox its protocol line stays near 3,300 bytes, under the
server's 4,096-byte control-line limit: past it the server closes the connection, and
nats-py does not reconnect after such an error."""

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
    if len(name) <= MAX_TOKEN_CHARS and _READABLE.fullmatch(name):
        return name
    try:
        raw = name.encode()
    except UnicodeEncodeError as exc:  # lone surrogates, e.g. from undecodable argv bytes
        raise ValidationError(f"name is not valid Unicode text: {name!r}") from exc
    token = "".join(chr(b) if b in _SAFE else f"={b:02X}" for b in raw)
    if len(token) > MAX_TOKEN_CHARS:
        raise ValidationError(name_too_long(len(token)))  # callers check first, naming the field
    return token


def token_length(name: str) -> int:
    """How many characters `encode_name` makes of `name` (without building the token)."""
    raw = name.encode(errors="surrogatepass")
    return sum(1 if b in _SAFE else 3 for b in raw)


def name_too_long(token_chars: int, field: str = "name") -> str:
    """The error for a name whose token passes `MAX_TOKEN_CHARS`."""
    return (
        f"Field '{field}' is too long for a NATS subject: {token_chars} characters once"
        f" encoded (limit {MAX_TOKEN_CHARS})"
    )


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
