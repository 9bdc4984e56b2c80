"""Channel deciders: reset the conversation context, switch the persona (pure)."""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime

from llm_es.domain.events import ContextReset, PersonaSwitched


def decide_reset(*, channel: str, user: str, now: datetime) -> ContextReset:
    """Forget the channel's conversation (the summary with it); memories and persona stay."""
    return ContextReset(at=now, channel=channel, user=user)


def persona_name(requested: str) -> str:
    """How a persona is named in a request: case and surrounding blanks do not count."""
    return requested.strip().lower()


def decide_persona_switch(
    *,
    channel: str,
    user: str | None,
    requested: str,
    personas: Collection[str],
    now: datetime,
) -> PersonaSwitched | None:
    """Switch the channel to the persona `requested` names; None when there is no such one."""
    wanted = persona_name(requested)
    if wanted not in personas:
        return None
    return PersonaSwitched(at=now, channel=channel, user=user, persona=wanted)
