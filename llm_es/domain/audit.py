"""The audit's arithmetic: what one event adds to a usage row, and which group it falls in.

Pure and shared: `llm-replay audit` folds the log's bytes through it, and the
dashboard of `llm-es serve` folds the plugin's own events through it, so the
two agree by construction. An event counts on the UTC day of its own `at`,
exactly as the usage view counts `requests_today` and `tokens_today`.
Bodies are plain mappings of an event's fields plus `type` (see `audit_body`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import msgspec

from llm_es.domain.events import (
    EVENT_TYPES,
    Event,
    TokensSpent,
    TurnAdmitted,
    TurnRejected,
    iso_utc,
)

AUDITED_TYPES = (TurnAdmitted.TYPE, TurnRejected.TYPE, TokensSpent.TYPE)
ADMITTED, REJECTED, SPENT = AUDITED_TYPES
NO_VALUE = "-"
"""Group of a rejection under `by` provider|model|purpose (no provider was asked), and of
a service completion under `by` channel (it has no channel)."""
DEFAULTS: dict[str, dict[str, Any]] = {
    name: {
        f.name: f.default
        for f in msgspec.structs.fields(EVENT_TYPES[name])
        if f.default is not msgspec.NODEFAULT
    }
    for name in AUDITED_TYPES
}
"""Fields an event stored before they existed reads as (the class defaults)."""


def audit_body(event: Event) -> dict[str, Any]:
    """An event's fields as the audit reads them (`type` added, `at` as ISO text)."""
    body = msgspec.structs.asdict(event)
    body["type"] = event.TYPE
    body["at"] = iso_utc(event.at)
    return body


def moment_of(text: str) -> datetime:
    """The UTC moment of an event's `at` text (one without an offset is unreadable)."""
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        raise ValueError("time without offset")
    return moment.astimezone(UTC)


def day_of(at_text: str) -> str:
    """The UTC day (`YYYY-MM-DD`) an event counts on."""
    return at_text[:10] if at_text[-1:] == "Z" else moment_of(at_text).date().isoformat()


def audit_group(body: Mapping[str, Any], by: str | None) -> str | None:
    """The row group of an audited event under `by` (None: no grouping)."""
    if by is None:
        return None
    if by == "day":
        return day_of(body["at"])
    if by == "channel":
        return body["channel"] or NO_VALUE
    type_name = body["type"]
    if type_name == REJECTED:
        return NO_VALUE
    return body.get(by, DEFAULTS[type_name].get(by)) or NO_VALUE


@dataclass(slots=True)
class AuditRow:
    """Sums for one group, and the log sequences they come from."""

    user: str | None
    group: str | None
    requests: int = 0
    rejected: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0
    priced: int = 0
    estimated: int = 0
    events: int = 0
    first_seq: int = 0
    last_seq: int = 0

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def count(self, seq: int, body: Mapping[str, Any]) -> None:
        """Add one audited event (a request, a rejection or a provider call's tokens)."""
        type_name = body["type"]
        if type_name == SPENT:
            self.prompt_tokens += int(body["prompt_tokens"])
            self.completion_tokens += int(body["completion_tokens"])
            cost = body.get("cost")  # default None: unpriced
            if cost is not None:
                self.cost += float(cost)
                self.priced += 1
            if body.get("estimated"):
                self.estimated += 1
        elif type_name == ADMITTED:
            self.requests += 1
        else:
            self.rejected += 1
        if not self.events:
            self.first_seq = self.last_seq = seq
        # Types may be read side by side, so sequences arrive in runs, not in order.
        elif seq > self.last_seq:
            self.last_seq = seq
        elif seq < self.first_seq:
            self.first_seq = seq
        self.events += 1

    def add(self, other: AuditRow) -> None:
        self.requests += other.requests
        self.rejected += other.rejected
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        self.cost += other.cost
        self.priced += other.priced
        self.estimated += other.estimated
        if other.events:
            self.first_seq = (
                min(self.first_seq, other.first_seq) if self.events else other.first_seq
            )
            self.last_seq = max(self.last_seq, other.last_seq)
        self.events += other.events

    def as_dict(self) -> dict[str, Any]:
        row: dict[str, Any] = {}
        if self.user is not None:
            row["user"] = self.user
        if self.group is not None:
            row["group"] = self.group
        row.update(
            requests=self.requests,
            rejected=self.rejected,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            tokens=self.tokens,
            cost=round(self.cost, 10) if self.priced else None,
            estimated=self.estimated,
            events=self.events,
            first_seq=self.first_seq or None,
            last_seq=self.last_seq or None,
        )
        return row
