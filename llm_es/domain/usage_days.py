"""Usage per UTC day: the audit's rows by provider, model and user, errors and turn latency.

The fold behind the dashboard of `llm-es serve` and `llm-replay audit --plot`.
Requests, rejections and tokens go through `AuditRow.count` and `audit_group`,
the very code of `llm-replay audit`, so a day's figures here equal the audit's
for that day. It also counts failed turns by error type, rejections by window,
and completed turns' latency in fixed buckets (p50/p99 to within one bucket).
Fed bodies as `audit_body` makes them, in any order; `keep_days` bounds memory.
"""

from __future__ import annotations

import bisect
import itertools
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

from llm_es.domain.audit import AUDITED_TYPES, REJECTED, AuditRow, audit_group, day_of
from llm_es.domain.events import TurnCompleted, TurnFailed

USAGE_GROUPINGS = ("provider", "model")
"""What a day's requests and tokens can be stacked by."""
LATENCY_RATIO = 2**0.25
LATENCY_BUCKETS_MS: tuple[float, ...] = tuple(LATENCY_RATIO**i for i in range(80))
"""Upper bounds, 1 ms to about 15 minutes, each 19% above the last: a quantile read from
them is off by at most that. A slower turn counts in the last bucket."""
_COMPLETED, _FAILED = TurnCompleted.TYPE, TurnFailed.TYPE
_CHARTED = frozenset((*AUDITED_TYPES, _COMPLETED, _FAILED))


def day_range(last: date, days: int) -> list[str]:
    """The `days` UTC days up to and including `last`, oldest first, as `YYYY-MM-DD`."""
    return [(last - timedelta(days=back)).isoformat() for back in range(days - 1, -1, -1)]


def latency_bucket(latency_ms: float) -> int:
    """Index of the first bucket whose bound is at or above `latency_ms` (the last bucket
    for a slower turn)."""
    return min(bisect.bisect_left(LATENCY_BUCKETS_MS, latency_ms), len(LATENCY_BUCKETS_MS) - 1)


def bucket_quantile(counts: Sequence[int], quantile: float) -> float | None:
    """The bound of the bucket holding the `quantile` rank (None: no turn)."""
    seen = list(itertools.accumulate(counts))
    if not seen or seen[-1] == 0:
        return None
    index = bisect.bisect_left(seen, max(1, round(quantile * seen[-1])))
    return LATENCY_BUCKETS_MS[index] if index < len(seen) else LATENCY_BUCKETS_MS[-1]


@dataclass(slots=True)
class Day:
    """One UTC day's sums."""

    rows: dict[str, dict[str | None, AuditRow]] = field(
        default_factory=lambda: {by: {} for by in (*USAGE_GROUPINGS, "user")}
    )
    """grouping (provider, model, user) -> group -> its row."""
    errors: Counter[str] = field(default_factory=Counter)
    latency: list[int] = field(default_factory=lambda: [0] * len(LATENCY_BUCKETS_MS))


class UsageDays:
    """Per-day sums of the log's usage, kept for the last `keep_days` days (None: all)."""

    def __init__(self, keep_days: int | None = None) -> None:
        self.keep_days = keep_days
        self.days: dict[str, Day] = {}
        self.oldest = ""
        """Days before this one are not kept (empty: every day is)."""
        self.events = 0
        self.last_seq = 0

    def count(self, seq: int, body: Mapping[str, Any]) -> None:
        """Fold one event's body (types the dashboard does not chart are ignored)."""
        type_name = body["type"]
        if type_name not in _CHARTED:
            return
        day = self._day(body)
        if day is None:
            return
        if type_name == _COMPLETED:
            day.latency[latency_bucket(float(body["latency_ms"]))] += 1
        elif type_name == _FAILED:
            day.errors[body["error_type"]] += 1
        else:
            for by in USAGE_GROUPINGS:
                self._row(day, by, audit_group(body, by)).count(seq, body)
            self._row(day, "user", body["user"]).count(seq, body)
            if type_name == REJECTED:
                day.errors[f"rejected_{body['window']}"] += 1
        self.events += 1
        self.last_seq = max(self.last_seq, seq)

    def _day(self, body: Mapping[str, Any]) -> Day | None:
        name = day_of(body["at"])
        if name < self.oldest:
            return None
        day = self.days.get(name)
        if day is None:
            day = self.days[name] = Day()
        return day

    @staticmethod
    def _row(day: Day, by: str, group: str | None) -> AuditRow:
        rows = day.rows[by]
        row = rows.get(group)
        if row is None:
            row = rows[group] = AuditRow(group if by == "user" else None, group)
        return row

    def forget_before(self, today: date) -> None:
        """Drop the days that fell out of `keep_days` up to `today`."""
        if self.keep_days is None:
            return
        oldest = (today - timedelta(days=self.keep_days - 1)).isoformat()
        if oldest <= self.oldest:
            return
        self.oldest = oldest
        for name in [name for name in self.days if name < oldest]:
            del self.days[name]

    def per_day(self, by: str, days: Sequence[str]) -> dict[str, Any]:
        """Requests, rejections and tokens of each day, stacked by provider or model."""
        if by not in USAGE_GROUPINGS:
            raise ValueError(f"by {by!r}: choose from {', '.join(USAGE_GROUPINGS)}")
        groups = sorted(
            {
                group or ""
                for name in days
                if name in self.days
                for group in self.days[name].rows[by]
            }
        )
        rows_of_days = [self.days[name].rows[by] if name in self.days else {} for name in days]
        series: dict[str, dict[str, list[int]]] = {
            measure: {
                group: [
                    getattr(rows[group], measure) if group in rows else 0 for rows in rows_of_days
                ]
                for group in groups
            }
            for measure in ("tokens", "requests", "rejected")
        }
        return {"by": by, "days": list(days), "groups": groups, **series}

    def top_users(self, days: Iterable[str], limit: int) -> list[AuditRow]:
        """Users by tokens over `days`, most first (then requests, then name), as the audit."""
        sums: dict[str | None, AuditRow] = {}
        for name in days:
            day = self.days.get(name)
            if day is None:
                continue
            for user, row in day.rows["user"].items():
                total = sums.get(user)
                if total is None:
                    total = sums[user] = AuditRow(user, None)
                total.add(row)
        ranked = sorted(sums.values(), key=lambda r: (-r.tokens, -r.requests, r.user or ""))
        return ranked[:limit]

    def errors_per_day(self, days: Sequence[str]) -> dict[str, Any]:
        """Failed turns by error type and rejections by window (`rejected_<window>`), per day."""
        kinds = sorted(
            {kind for name in days if name in self.days for kind in self.days[name].errors}
        )
        counts = {
            kind: [self.days[name].errors[kind] if name in self.days else 0 for name in days]
            for kind in kinds
        }
        return {"days": list(days), "types": kinds, "counts": counts}

    def latency_per_day(self, days: Sequence[str]) -> dict[str, Any]:
        """Completed turns' latency p50 and p99 (ms, bucket bounds) and their count, per day."""
        p50: list[float | None] = []
        p99: list[float | None] = []
        turns: list[int] = []
        for name in days:
            counts = self.days[name].latency if name in self.days else []
            p50.append(_rounded(bucket_quantile(counts, 0.5)))
            p99.append(_rounded(bucket_quantile(counts, 0.99)))
            turns.append(sum(counts))
        return {"days": list(days), "p50_ms": p50, "p99_ms": p99, "turns": turns}


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 1)
