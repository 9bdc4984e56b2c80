"""`Outcome`: what every service command answers, for the NATS surfaces to shape."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Outcome:
    """A command's answer: the text for the channel, or an error, plus data for callers."""

    success: bool
    message: str
    data: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def ok(cls, message: str, **data: Any) -> Outcome:
        return cls(True, message, data)

    @classmethod
    def error(cls, message: str, **data: Any) -> Outcome:
        return cls(False, message, data)
