"""Where an event is stored: `llm.ev.<channel>.<user>.<EventType>` (`llm_es.domain.tokens`)."""

from __future__ import annotations

import functools

from llm_es.domain.events import Event
from llm_es.domain.tokens import encode_optional

SUBJECT_PREFIX = "llm.ev"
NAME_CACHE_SIZE = 65_536
"""Names whose tokens are remembered: every stored event read is checked against its subject."""


@functools.lru_cache(maxsize=NAME_CACHE_SIZE)
def name_token(name: str | None) -> str:
    """`encode_optional`, remembered (a name too long for a token raises ValidationError)."""
    return encode_optional(name)


def subject_of(event: Event, prefix: str = SUBJECT_PREFIX) -> str:
    """The subject an event is stored on: `<prefix>.<channel>.<user>.<EventType>`."""
    return f"{prefix}.{name_token(event.channel_name)}.{name_token(event.user_name)}.{event.TYPE}"
