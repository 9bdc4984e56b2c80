"""History tools on the public API of llm_es and projections: the `llm-replay` command.

- `run_rebuild`: fold the log into a fresh views bucket and switch to it (blue/green).
- `run_verify`: fold the log in memory and diff it against the live views.
- `channel_state` / `user_state`: a channel's or user's views at a past moment.
- `run_audit`: requests, rejections, tokens and cost per user and group.
- `run_tail` / `run_export`: follow the log, or dump it as JSON lines.
- `EventLog` / `LogFold`: the ordered read and the in-memory fold beneath them.
"""

from __future__ import annotations

from replay.audit import AuditReport, AuditRow, run_audit
from replay.errors import LogUnavailable, ReplayError, UsageError
from replay.fold import LogFold, select_projections
from replay.reading import EventLog, LogSelection, RawEvent, event_filter
from replay.rebuild import RebuildReport, run_rebuild
from replay.state import Moment, channel_state, user_state
from replay.tail import run_export, run_tail
from replay.verify import Difference, VerifyReport, run_verify

__all__ = [
    "AuditReport",
    "AuditRow",
    "Difference",
    "EventLog",
    "LogFold",
    "LogSelection",
    "LogUnavailable",
    "Moment",
    "RawEvent",
    "RebuildReport",
    "ReplayError",
    "UsageError",
    "VerifyReport",
    "channel_state",
    "event_filter",
    "run_audit",
    "run_export",
    "run_rebuild",
    "run_tail",
    "run_verify",
    "select_projections",
    "user_state",
]
