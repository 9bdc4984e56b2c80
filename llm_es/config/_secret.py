"""What keeps credentials out of reprs, logs and errors: `Secret`, `redact_url`, `scrub_secrets`."""

from __future__ import annotations

import hmac
import re
from collections.abc import Iterable
from typing import final


@final
class Secret:
    """A string that must not leak: `repr`/`str` hide it; `.reveal()` hands it out on purpose."""

    __slots__ = ("_value",)
    _value: str

    def __init__(self, value: str = "") -> None:
        if not isinstance(value, str):
            raise TypeError("Secret wraps a str")
        object.__setattr__(self, "_value", value)

    def reveal(self) -> str:
        """The secret itself, for the one place that sends it (an HTTP header, a NATS connect)."""
        return self._value

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("Secret is immutable")

    def __bool__(self) -> bool:
        return bool(self._value)

    def __repr__(self) -> str:
        return "Secret('***')" if self._value else "Secret('')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        # Constant-time, so comparing keys cannot leak them through timing.
        return hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        return hash((Secret, self._value))


def redact_url(url: str) -> str:
    """`url` with any password in its user-info replaced by `***`."""
    if "@" not in url:
        return url
    parts = []
    for server in url.split(","):
        scheme, sep, rest = server.partition("://")
        if not sep:
            scheme, rest = "", server
        userinfo, at, hostpart = rest.rpartition("@")
        if at:
            user, colon, _password = userinfo.partition(":")
            # A lone user-info (nats://TOKEN@host) is a token: hide it too.
            userinfo = f"{user}:***" if colon else "***"
            rest = f"{userinfo}@{hostpart}"
        parts.append(f"{scheme}{sep}{rest}")
    return ",".join(parts)


# Key-shaped words, whole or abbreviated as servers echo them: `sk-proj-...`,
# `sk-or-v1-...`, `sk-or-...55aa`, `sk-****abcd`.
_KEY_SHAPED = re.compile(r"\b(?:sk|pk|rk)-[\w.*\u2026-]*", re.ASCII | re.IGNORECASE)
_VALUE = r"[^\s\"',;&)\]}>]+"
_BEARER = re.compile(rf"\b(Bearer|Basic)\s+{_VALUE}", re.IGNORECASE)
_NAMED = re.compile(
    r"\b(api[_-]?key|access[_-]?token|token|password|secret)([\"']?\s*[=:]\s*[\"']?)" + _VALUE,
    re.IGNORECASE,
)
_WORDS = re.compile(r"[\w-]{6,}", re.ASCII)
MIN_SCRUBBED_FRAGMENT = 6
"""Shortest piece of a known secret scrubbed when it appears alone (a server's "...55aa"
suffix is scrubbed with the key-shaped word around it)."""


def scrub_secrets(text: str, known: Iterable[str] = ()) -> str:
    """`text` (a server's error, an exception) without anything that may be a credential.

    Gone: every `known` secret, whole or any piece of at least six of its characters;
    key-shaped words (`sk-...`, `sk-or-...55aa`); `Bearer`/`Basic` credentials; the
    value after `api_key=`, `token:`, `password=` and the like.
    """
    for secret in known:
        if secret:
            text = text.replace(secret, "***")
    text = _KEY_SHAPED.sub("***", text)
    text = _BEARER.sub(r"\1 ***", text)
    text = _NAMED.sub(r"\1\2***", text)
    pieces = [s for s in known if len(s) >= MIN_SCRUBBED_FRAGMENT]
    if pieces:
        text = _WORDS.sub(
            lambda word: (
                "***" if any(_shares_piece(word.group(), s) for s in pieces) else word.group()
            ),
            text,
        )
    return text


def _shares_piece(word: str, secret: str) -> bool:
    """Whether `word` holds a run of `MIN_SCRUBBED_FRAGMENT` characters of `secret`."""
    return any(
        word[i : i + MIN_SCRUBBED_FRAGMENT] in secret
        for i in range(len(word) - MIN_SCRUBBED_FRAGMENT + 1)
    )


def url_passwords(url: str) -> list[str]:
    """The passwords and tokens inside the user-info of `url` (comma-separated servers)."""
    found = []
    for server in url.split(","):
        rest = server.partition("://")[2] or server
        userinfo, at, _hostpart = rest.rpartition("@")
        if at:
            user, colon, password = userinfo.partition(":")
            found.append(password if colon else user)
    return [secret for secret in found if secret]
