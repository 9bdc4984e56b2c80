"""`audit`: requests, rejections, tokens and cost per user and group, traced to log sequences.

Only `TurnAdmitted` (a request), `TurnRejected` and `TokensSpent` (tokens and
cost) are read, filtered by the server. Each counts on the UTC day of its own
`at`, exactly as the usage view counts `requests_today`, `rejected_today` and
`tokens_today`, so an audit of one day equals what the plugin reported that
day, and an audit of all time equals `total_requests` / `total_tokens`. Every
row carries the first and last sequence of the events it sums.

Each event goes through `llm_es.store.quarantine`, as the plugin's folds do:
one it quarantines is skipped and listed, so an audit never counts a forged
event the usage view leaves out.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterable
from contextlib import aclosing
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import msgspec

from llm_es.domain.events import EVENT_TYPES, TokensSpent, TurnAdmitted, TurnRejected
from llm_es.store.quarantine import Quarantine
from replay.errors import UsageError
from replay.progress import Progress
from replay.reading import EventLog, LogSelection, event_filter
from replay.times import iso_z

GROUPINGS = ("day", "provider", "model", "channel", "purpose")
AUDITED_TYPES = (TurnAdmitted.TYPE, TurnRejected.TYPE, TokensSpent.TYPE)
NO_VALUE = "-"
"""Group of a rejection under `--by provider|model|purpose` (no provider was asked), and of
a service completion under `--by channel` (it has no channel)."""
_SCHEMAS = {name: EVENT_TYPES[name].SCHEMA for name in AUDITED_TYPES}
_DEFAULTS = {
    name: {
        f.name: f.default
        for f in msgspec.structs.fields(EVENT_TYPES[name])
        if f.default is not msgspec.NODEFAULT
    }
    for name in AUDITED_TYPES
}
"""Fields an event stored before they existed reads as (the class defaults)."""
_ADMITTED, _REJECTED, _SPENT = AUDITED_TYPES


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


@dataclass
class AuditReport:
    """An audit's rows (ranked), totals and what it covered."""

    user: str | None
    by: str | None
    since: datetime | None
    until: datetime | None
    log_end: int
    rows: list[AuditRow] = field(default_factory=list)
    totals: AuditRow = field(default_factory=lambda: AuditRow(None, None))
    skipped: int = 0
    quarantined: list[int] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "scope": {"user": self.user} if self.user is not None else {"all": True},
            "by": self.by,
            "since": iso_z(self.since) if self.since else None,
            "until": iso_z(self.until) if self.until else None,
            "log_end": self.log_end,
            "skipped_events": self.skipped,
            "quarantined": {"count": self.skipped, "sequences": self.quarantined},
            "rows": [r.as_dict() for r in self.rows],
            "totals": self.totals.as_dict(),
        }


class _Sums:
    """The aggregation loop's state: rows by group key."""

    def __init__(
        self, *, per_user: bool, by: str | None, since: datetime | None, until: datetime | None
    ) -> None:
        self.per_user = per_user
        self.by = by
        self.since = since
        self.until = until
        self.rows: dict[tuple[str | None, str | None], AuditRow] = {}
        self.quarantine = Quarantine("audit")

    def feed(self, seq: int, subject: str, data: bytes, stored_ns: int) -> None:
        event = self.quarantine.admit(seq, subject, data, stored_ns)
        if event is None or event.TYPE not in _SCHEMAS:
            return
        body = {name: getattr(event, name) for name in event.__struct_fields__}
        body["type"] = event.TYPE
        body["at"] = iso_z(event.at)
        self._count(seq, body)

    def _count(self, seq: int, body: dict[str, Any]) -> None:
        type_name = body["type"]
        at_text = body["at"]
        if self.since is not None or self.until is not None:
            at = _moment(at_text)
            if (self.since is not None and at < self.since) or (
                self.until is not None and at >= self.until
            ):
                return
        by = self.by
        if by is None:
            group = None
        elif by == "day":
            group = at_text[:10] if at_text[-1:] == "Z" else _moment(at_text).date().isoformat()
        elif by == "channel":
            group = body["channel"] or NO_VALUE
        elif type_name == _REJECTED:
            group = NO_VALUE
        else:
            group = body.get(by, _DEFAULTS[type_name].get(by)) or NO_VALUE
        user = body["user"] if self.per_user else None
        row = self.rows.get((user, group))
        if row is None:
            row = self.rows[(user, group)] = AuditRow(user, group, first_seq=seq, last_seq=seq)
        if type_name == _SPENT:
            row.prompt_tokens += int(body["prompt_tokens"])
            row.completion_tokens += int(body["completion_tokens"])
            cost = body.get("cost")  # default None: unpriced
            if cost is not None:
                row.cost += float(cost)
                row.priced += 1
            if body.get("estimated"):
                row.estimated += 1
        elif type_name == _ADMITTED:
            row.requests += 1
        else:
            row.rejected += 1
        row.events += 1
        # Types may be read side by side (`--all`), so sequences arrive in runs, not in order.
        if seq > row.last_seq:
            row.last_seq = seq
        elif seq < row.first_seq:
            row.first_seq = seq


def _moment(text: str) -> datetime:
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        raise ValueError("time without offset")
    return moment.astimezone(UTC)


async def run_audit(
    log: EventLog,
    *,
    user: str | None,
    by: str | None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int | None = None,
    progress: Progress | None = None,
) -> AuditReport:
    """Sum one user's usage (by group), or every user's (`user` None), ranked by tokens."""
    if by is not None and by not in GROUPINGS:
        raise UsageError(f"--by {by!r}: choose from {', '.join(GROUPINGS)}")
    if since is not None and until is not None and until <= since:
        raise UsageError(f"--until ({iso_z(until)}) must be after --since ({iso_z(since)})")
    end = await log.end()
    if user is not None and await log.last_seq_matching(event_filter(user=user).subject) == 0:
        raise UsageError(f"unknown user {user!r}: no event in the log names them")
    sums = _Sums(per_user=user is None, by=by, since=since, until=until)
    if user is not None:
        # One user's events are few: one consumer on `llm.ev.*.<user>.*`.
        selections = [event_filter(user=user, types=AUDITED_TYPES)]
    else:
        # Every user's: one consumer per audited type, side by side, so the server
        # skips the other events (sums do not depend on the order they arrive in).
        selections = [event_filter(types=[t]) for t in AUDITED_TYPES]
    reached = [0] * len(selections)
    if progress is not None:
        progress.total = end

    async def consume(index: int, selection: LogSelection) -> None:
        selection = dataclasses.replace(selection, to_seq=end)
        async with aclosing(log.read(selection)) as batches:
            async for batch in batches:
                feed = sums.feed
                for seq, subject, data, stored_ns in batch:
                    feed(seq, subject, data, stored_ns)
                reached[index] = batch[-1][0]
                if progress is not None:
                    progress.done = min(reached)
        reached[index] = end

    await asyncio.gather(*(consume(i, s) for i, s in enumerate(selections)))
    if progress is not None:
        progress.done = end
    report = AuditReport(user=user, by=by, since=since, until=until, log_end=end)
    report.skipped = sums.quarantine.count
    report.quarantined = sorted(sums.quarantine.sequences)
    report.rows = _ranked(sums.rows.values(), per_user=user is None)
    for row in report.rows:
        report.totals.add(row)
    if limit is not None and user is None:
        report.rows = _top_users(report.rows, limit)
    return report


def _ranked(rows: Iterable[AuditRow], *, per_user: bool) -> list[AuditRow]:
    rows = list(rows)
    if not per_user:
        return sorted(rows, key=lambda r: r.group or "")
    per_user_tokens: dict[str, tuple[int, int]] = {}
    for row in rows:
        tokens, requests = per_user_tokens.get(row.user or "", (0, 0))
        per_user_tokens[row.user or ""] = (tokens + row.tokens, requests + row.requests)

    def rank(row: AuditRow) -> tuple[int, int, str, str]:
        tokens, requests = per_user_tokens[row.user or ""]
        return (-tokens, -requests, row.user or "", row.group or "")

    return sorted(rows, key=rank)


def _top_users(rows: list[AuditRow], limit: int) -> list[AuditRow]:
    kept: list[AuditRow] = []
    users: set[str | None] = set()
    for row in rows:
        if row.user not in users:
            if len(users) >= limit:
                break
            users.add(row.user)
        kept.append(row)
    return kept
