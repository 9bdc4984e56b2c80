"""What keeps credentials out of reprs, logs and errors: `Secret` and `redact_url`."""

from __future__ import annotations

import hmac
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
