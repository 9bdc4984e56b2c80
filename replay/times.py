"""Reading the moments operators type: ISO 8601 times and dates, `today`, or ages like `2h`.

Every moment is UTC; a time without an offset is read as UTC, like every `at`
in the log.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from replay.errors import UsageError

_AGE = re.compile(r"-?(\d+)\s*(s|m|h|d|w)(?:\s+ago)?", re.IGNORECASE)
_AGE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
TIME_HELP = (
    "an ISO 8601 time (2024-05-17T12:00:00Z), a date (2024-05-17, 00:00 UTC), "
    "now, today, yesterday, or an age such as 90s, 15m, 2h, 7d"
)


def parse_moment(text: str, *, now: datetime, option: str = "time") -> datetime:
    """The UTC moment `text` names; UsageError naming `option` when it names none."""
    value = text.strip()
    lowered = value.lower()
    midnight = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    if lowered == "now":
        return now
    if lowered == "today":
        return midnight
    if lowered == "yesterday":
        return midnight - timedelta(days=1)
    age = _AGE.fullmatch(value)
    if age is not None:
        return now - timedelta(seconds=int(age.group(1)) * _AGE_UNITS[age.group(2).lower()])
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise UsageError(f"{option}: cannot read {text!r}: use {TIME_HELP}") from None
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)
