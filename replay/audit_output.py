"""The audit report for people and programs: an aligned table, JSON or CSV."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence

import orjson

from llm_es.domain.events import iso_utc
from replay.audit import NO_VALUE, AuditReport, AuditRow

FORMATS = ("table", "json", "csv")
NO_USER = "(no user)"
"""Label of spend booked to no user (channel summaries); JSON says `null`."""
TABLE_NUMBERS = ("requests", "rejected", "prompt", "completion", "tokens", "cost", "log seqs")


def render(report: AuditReport, output_format: str) -> str:
    """The report as an aligned table, JSON or CSV."""
    if output_format == "json":
        return orjson.dumps(report.as_dict(), option=orjson.OPT_INDENT_2).decode()
    if output_format == "csv":
        return render_csv(report)
    return render_table(report)


def _columns(report: AuditReport) -> list[str]:
    columns = []
    if report.user is None:
        columns.append("user")
    if report.by is not None:
        columns.append(report.by)
    return columns or ["period"]


def _keys(report: AuditReport, row: AuditRow) -> list[str]:
    keys = []
    if report.user is None:
        keys.append(NO_USER if row.user is None else row.user)
    if report.by is not None:
        keys.append(NO_VALUE if row.group is None else row.group)
    return keys or ["all" if report.since is None and report.until is None else "selected"]


def render_csv(report: AuditReport) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    # A row's JSON fields, in their order (one with no user and no group has only these).
    fields = list(AuditRow(None, None).as_dict())
    writer.writerow([*_columns(report), *fields])
    for row in report.rows:
        values = row.as_dict()
        writer.writerow(
            [*_keys(report, row), *("" if values[f] is None else values[f] for f in fields)]
        )
    return out.getvalue().rstrip("\n")


def render_table(report: AuditReport) -> str:
    scope = f"user {report.user!r}" if report.user is not None else "all users"
    period = (
        f"{iso_utc(report.since) if report.since else 'the start'} .. "
        f"{iso_utc(report.until) if report.until else 'now'}"
    )
    title = f"audit of {scope}" + (f" by {report.by}" if report.by else "")
    columns = _columns(report)
    header = [*columns, *TABLE_NUMBERS]
    body = [[*_keys(report, row), *_numbers(row)] for row in report.rows]
    totals = ["total", *[""] * (len(columns) - 1), *_numbers(report.totals)]
    widths = [max(map(len, cells)) for cells in zip(header, *body, totals, strict=True)]

    def fmt(line: Sequence[str]) -> str:
        cells = [
            cell.ljust(width)
            if index < len(columns) or index == len(line) - 1
            else cell.rjust(width)
            for index, (cell, width) in enumerate(zip(line, widths, strict=True))
        ]
        return "  ".join(cells).rstrip()

    lines = [f"{title}, {period} (log up to sequence {report.log_end:,})", fmt(header)]
    lines += [fmt(line) for line in body]
    if not body:
        lines.append("(no requests, rejections or tokens in this period)")
    lines.append(fmt(["-" * w for w in widths]))
    lines.append(fmt(totals))
    if report.skipped:
        lines.append(
            f"quarantined (skipped, as the plugin skips them): {report.skipped:,}, "
            f"seq {', '.join(map(str, report.quarantined[:20]))}"
            + (" ..." if report.skipped > 20 else "")
        )
    return "\n".join(lines)


def _numbers(row: AuditRow) -> list[str]:
    seqs = f"{row.first_seq}..{row.last_seq}" if row.events else "-"
    cost = f"{row.cost:.6f}" if row.priced else "-"
    return [
        f"{row.requests:,}",
        f"{row.rejected:,}",
        f"{row.prompt_tokens:,}",
        f"{row.completion_tokens:,}",
        f"{row.tokens:,}",
        cost,
        seqs,
    ]
