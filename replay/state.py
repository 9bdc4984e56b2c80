"""`state`: a channel's or a user's views as they were at a past moment or log position.

Only the events of that channel (`llm.ev.<channel>.>`) or user
(`llm.ev.*.<user>.>`) are read, filtered by the server, and folded by the
same projections the plugin runs, in log order up to `--seq N`, or up to the
last event before the first one stamped after `--at TIME` (the views exactly
as the plugin held them then).
"""

from __future__ import annotations

from contextlib import aclosing
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

from llm_es.config import Config
from llm_es.domain.events import iso_utc
from llm_es.domain.limits import usage_numbers
from llm_es.domain.views import (
    ContextView,
    MemoryView,
    SettingsView,
    UsageView,
    context_key,
    memories_group,
    settings_key,
    usage_key,
)
from projections.base import Projection
from replay.errors import UsageError
from replay.fold import LogFold, select_projections
from replay.reading import EventLog, LogSelection, event_filter

TEXT_CHARS = 160


@dataclass(frozen=True, slots=True)
class Moment:
    """Where to stop: a sequence, a time, or the end of the log (both None)."""

    seq: int | None = None
    at: datetime | None = None

    def describe(self) -> str:
        if self.seq is not None:
            return f"sequence {self.seq:,}"
        if self.at is not None:
            return iso_utc(self.at)
        return "now"


async def fold_until(
    log: EventLog,
    projections: list[Projection],
    subject: str,
    moment: Moment,
) -> tuple[LogFold, datetime | None, bool]:
    """Fold the selected events up to the moment: the fold, the last event's time, any at all."""
    selection = LogSelection(subject=subject, to_seq=moment.seq)
    # Reads the stream's state: a clear message when there is no log at all.
    fold = LogFold(projections, started_mid_log=await log.starts_mid_log(selection))
    last_at: datetime | None = None
    if await log.last_seq_matching(subject) == 0:
        return fold, None, False
    async with aclosing(log.read(selection)) as batches:
        async for batch in batches:
            for seq, subject, data, stored_ns in batch:
                event = fold.quarantine.admit_or_reason(seq, subject, data, stored_ns)
                if isinstance(event, str):
                    fold.skip(seq, event)
                    continue
                if moment.at is not None and event.at > moment.at:
                    return fold, last_at, True
                fold.apply(event, seq)
                last_at = event.at
    return fold, last_at, True


async def channel_state(
    log: EventLog, config: Config, channel: str, moment: Moment
) -> dict[str, Any]:
    """Context (summary, recent messages, turns in flight), persona and memories of a channel."""
    projections = select_projections(config, ("context", "memories", "settings"))
    fold, last_at, known = await fold_until(
        log, projections, event_filter(channel=channel).subject, moment
    )
    if not known:
        raise UsageError(f"unknown channel {channel!r}: no event in the log names it")
    values = fold.values
    opened = log.keyring.open_text  # personal text, `[erased]` once its key is destroyed
    context = cast(ContextView | None, values.get(context_key(channel)))
    settings = cast(SettingsView | None, values.get(settings_key(channel)))
    group = memories_group(channel) + "."
    memories = sorted(
        (cast(MemoryView, v) for k, v in values.items() if k.startswith(group)),
        key=lambda m: m["seq"],
    )
    return {
        "channel": channel,
        "as_of": _as_of(moment, fold, last_at),
        "persona": settings["persona"] if settings else config.service.default_persona,
        "persona_set": (
            {"by": settings["changed_by"], "at": settings["changed_at"], "seq": settings["seq"]}
            if settings
            else None
        ),
        "summary": await opened(context["summary"]) if context and context["summary"] else None,
        "messages": (
            [{**m, "content": await opened(m["content"])} for m in context["messages"]]
            if context
            else []
        ),
        "pending_turns": (
            [
                {"turn_id": t, **p, "content": await opened(p["content"])}
                for t, p in context["pending"].items()
            ]
            if context
            else []
        ),
        "memories": [{**m, "content": await opened(m["content"])} for m in memories],
    }


async def user_state(log: EventLog, config: Config, user: str, moment: Moment) -> dict[str, Any]:
    """A user's usage view then, and what each limit had left at that moment."""
    fold, last_at, known = await fold_until(
        log, select_projections(config, ("usage",)), event_filter(user=user).subject, moment
    )
    if not known:
        raise UsageError(f"unknown user {user!r}: no event in the log names them")
    usage = cast(UsageView | None, fold.values.get(usage_key(user)))
    # Limits are judged at the moment asked for: a time, else the last event's time, else now.
    now = moment.at or (last_at if moment.seq is not None else None) or datetime.now(UTC)
    numbers = usage_numbers(usage, now)
    limits = config.rate_limits

    def left(limit: int | None, used: int) -> int | None:
        return None if limit is None else max(limit - used, 0)

    remaining = {
        "requests_minute": left(limits.requests_per_minute, numbers.requests_minute),
        "requests_hour": left(limits.requests_per_hour, numbers.requests_hour),
        "requests_day": left(limits.requests_per_day, numbers.requests_today),
        "tokens_day": left(limits.tokens_per_day, numbers.tokens_today + numbers.reserved_tokens),
    }
    return {
        "user": user,
        "as_of": _as_of(moment, fold, last_at),
        "limits_judged_at": iso_utc(now),
        "requests_last_minute": numbers.requests_minute,
        "requests_last_hour": numbers.requests_hour,
        "requests_today": numbers.requests_today,
        "tokens_today": numbers.tokens_today,
        "reserved_tokens": numbers.reserved_tokens,
        "rate_limits": {
            "requests_per_minute": limits.requests_per_minute,
            "requests_per_hour": limits.requests_per_hour,
            "requests_per_day": limits.requests_per_day,
            "tokens_per_day": limits.tokens_per_day,
        },
        "rate_limits_remaining": remaining,
        "rate_limited": any(v == 0 for v in remaining.values()),
        "usage": dict(usage) if usage else None,
    }


def _as_of(moment: Moment, fold: LogFold, last_at: datetime | None) -> dict[str, Any]:
    return {
        "requested": moment.describe(),
        "seq": fold.position or None,
        "at": iso_utc(last_at) if last_at else None,
        "events": fold.events,
    }


# ------------------------------------------------------------------ text


def render_channel(state: dict[str, Any]) -> str:
    """The channel's state for a person."""
    as_of = state["as_of"]
    lines = [
        f"channel {state['channel']!r} as of {as_of['requested']} "
        f"(last event: sequence {as_of['seq'] or '-'}, {as_of['at'] or 'none yet'})",
    ]
    persona_set = state["persona_set"]
    lines.append(
        f"persona: {state['persona']}"
        + (f" (set by {persona_set['by']} at {persona_set['at']})" if persona_set else " (default)")
    )
    lines.append(f"summary: {_clip(state['summary']) if state['summary'] else '-'}")
    lines.append(f"recent messages: {len(state['messages'])}")
    for message in state["messages"]:
        who = message["user_id"] or message["role"]
        lines.append(f"  [{message['timestamp']}] {who}: {_clip(message['content'])}")
    if state["pending_turns"]:
        lines.append(f"turns in flight: {len(state['pending_turns'])}")
        for turn in state["pending_turns"]:
            lines.append(f"  [{turn['timestamp']}] {turn['user']}: {_clip(turn['content'])}")
    lines.append(f"memories: {len(state['memories'])}")
    for memory in state["memories"]:
        lines.append(
            f"  {memory['id']} [{memory['category']}, importance {memory['importance']}] "
            f"{_clip(memory['content'])}"
        )
    return "\n".join(lines)


def render_user(state: dict[str, Any]) -> str:
    """The user's usage and limits for a person."""
    as_of = state["as_of"]
    usage = state["usage"] or {}
    limits = state["rate_limits"]
    remaining = state["rate_limits_remaining"]

    def limit_line(kind: str, period: str, used: int) -> str:
        name = f"{kind}/{period}"
        limit, left = limits[f"{kind}_per_{period}"], remaining[f"{kind}_{period}"]
        if limit is None:
            return f"  {name:<18} {used:>8,} (no limit)"
        return f"  {name:<18} {used:>8,} of {limit:,} ({left:,} left)"

    lines = [
        f"user {state['user']!r} as of {as_of['requested']} "
        f"(last event: sequence {as_of['seq'] or '-'}, {as_of['at'] or 'none yet'})",
        f"limits judged at {state['limits_judged_at']}"
        + ("  RATE LIMITED" if state["rate_limited"] else ""),
        limit_line("requests", "minute", state["requests_last_minute"]),
        limit_line("requests", "hour", state["requests_last_hour"]),
        limit_line("requests", "day", state["requests_today"]),
        limit_line("tokens", "day", state["tokens_today"] + state["reserved_tokens"]),
        f"  reserved by open turns: {state['reserved_tokens']:,} tokens",
        f"rejected today: {usage.get('rejected_today', 0):,}",
        f"all time: {usage.get('total_requests', 0):,} requests, "
        f"{usage.get('total_tokens', 0):,} tokens",
        f"open turns: {len(usage.get('open_turns', {}))}",
    ]
    return "\n".join(lines)


def _clip(text: str) -> str:
    flat = text.replace("\n", " ")
    return flat if len(flat) <= TEXT_CHARS else flat[: TEXT_CHARS - 1] + "…"
