"""`audit`: requests, rejections, tokens and cost per user and group, traced to log sequences.

`TurnAdmitted` (a request), `TurnRejected` and `TokensSpent` (tokens and
cost) are counted; the turns' ends are read beside them, in log order, for the
turn rule (`llm_es.domain.turn_order`: a spend counts only on an open turn, as
in the plugin's usage view). Each counts on the UTC day of its own
`at`, exactly as the usage view counts `requests_today`, `rejected_today` and
`tokens_today`, so an audit of one day equals what the plugin reported that
day, and an audit of all time equals `total_requests` / `total_tokens`. Every
row carries the first and last sequence of the events it sums.

Each event goes through `llm_es.store.quarantine`, as the plugin's folds do:
one it quarantines is skipped and listed, so an audit never counts a forged
event the usage view leaves out.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from contextlib import aclosing
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from llm_es.domain.audit import (
    AUDITED_TYPES,
    NO_VALUE,
    AuditRow,
    audit_body,
    audit_group,
    moment_of,
)
from llm_es.domain.events import TurnCompleted, TurnFailed, iso_utc
from llm_es.domain.turn_order import OpenTurns
from llm_es.domain.usage_days import UsageDays
from llm_es.store.quarantine import Quarantine
from replay.errors import UsageError
from replay.progress import Progress
from replay.reading import EventLog, event_filter

__all__ = ["GROUPINGS", "NO_VALUE", "AuditReport", "AuditRow", "run_audit"]

GROUPINGS = ("day", "provider", "model", "channel", "purpose")
READ_TYPES = (*AUDITED_TYPES, TurnCompleted.TYPE, TurnFailed.TYPE)
"""What an audit reads: the counted events, and the turns' ends for the turn rule."""


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
            "since": iso_utc(self.since) if self.since else None,
            "until": iso_utc(self.until) if self.until else None,
            "log_end": self.log_end,
            "skipped_events": self.skipped,
            "quarantined": {"count": self.skipped, "sequences": self.quarantined},
            "rows": [r.as_dict() for r in self.rows],
            "totals": self.totals.as_dict(),
        }


class _Sums:
    """The aggregation loop's state: rows by group key."""

    def __init__(
        self,
        *,
        per_user: bool,
        by: str | None,
        since: datetime | None,
        until: datetime | None,
        days: UsageDays | None = None,
        started_mid_log: bool = False,
    ) -> None:
        self.per_user = per_user
        self.days = days
        """Also folds the audited events per day (for `--plot`)."""
        self.by = by
        self.since = since
        self.until = until
        self.rows: dict[tuple[str | None, str | None], AuditRow] = {}
        self.quarantine = Quarantine("audit", turns=OpenTurns(started_mid_log=started_mid_log))

    def feed(self, seq: int, subject: str, data: bytes, stored_ns: int) -> None:
        event = self.quarantine.admit(seq, subject, data, stored_ns)
        if event is None or event.TYPE not in AUDITED_TYPES:
            return
        body = audit_body(event)
        if self.since is not None or self.until is not None:
            at = moment_of(body["at"])
            if (self.since is not None and at < self.since) or (
                self.until is not None and at >= self.until
            ):
                return
        group = audit_group(body, self.by)
        user = body["user"] if self.per_user else None
        row = self.rows.get((user, group))
        if row is None:
            row = self.rows[(user, group)] = AuditRow(user, group)
        row.count(seq, body)
        if self.days is not None:
            self.days.count(seq, body)


async def run_audit(
    log: EventLog,
    *,
    user: str | None,
    by: str | None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int | None = None,
    progress: Progress | None = None,
    days: UsageDays | None = None,
) -> AuditReport:
    """Sum one user's usage (by group), or every user's (`user` None), ranked by tokens.

    With `days`, the same events are folded into it too (the per-day chart's figures)."""
    if by is not None and by not in GROUPINGS:
        raise UsageError(f"--by {by!r}: choose from {', '.join(GROUPINGS)}")
    if since is not None and until is not None and until <= since:
        raise UsageError(f"--until ({iso_utc(until)}) must be after --since ({iso_utc(since)})")
    end = await log.end()
    if user is not None and await log.last_seq_matching(event_filter(user=user).subject) == 0:
        raise UsageError(f"unknown user {user!r}: no event in the log names them")
    # One consumer, in log order (the turn rule needs it): `llm.ev.*.<user>.*` for one
    # user, every event for all; the types are picked by their subject's last token.
    selection = dataclasses.replace(event_filter(user=user, types=READ_TYPES), to_seq=end)
    sums = _Sums(
        per_user=user is None,
        by=by,
        since=since,
        until=until,
        days=days,
        started_mid_log=await log.starts_mid_log(selection),
    )
    if progress is not None:
        progress.total = end
    feed = sums.feed
    # A long log is read in a child process (`EventLog.read_all`): the fold here has a core.
    async with aclosing(log.read_all(selection)) as batches:
        async for batch in batches:
            for seq, subject, data, stored_ns in batch:
                feed(seq, subject, data, stored_ns)
            if progress is not None:
                progress.done = batch[-1][0]
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
