"""Charts as SVG text: stacked bars per day and lines per day, no library, no script.

The dashboard inlines them and `llm-replay audit --plot` writes them to a file,
so a report and the page show the same picture. Input is plain lists (one
value per day); every text is XML-escaped; colours follow the series' order.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from html import escape
from typing import Any

PALETTE = (
    "#4e79a7",
    "#f28e2b",
    "#59a14f",
    "#e15759",
    "#76b7b2",
    "#edc948",
    "#b07aa1",
    "#ff9da7",
    "#9c755f",
    "#bab0ac",
)
WIDTH = 760
PANEL_HEIGHT = 240
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 64, 150, 34, 34
PLOT_WIDTH = WIDTH - MARGIN_LEFT - MARGIN_RIGHT
PLOT_HEIGHT = PANEL_HEIGHT - MARGIN_TOP - MARGIN_BOTTOM
FONT = 'font-family="sans-serif" font-size="11"'
TITLE_FONT = 'font-family="sans-serif" font-size="13"'


def nice_ceiling(value: float) -> float:
    """The smallest 1, 2 or 5 times a power of ten at or above `value` (1 for nothing)."""
    if value <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 5, 10):
        if step * power >= value:
            return float(step * power)
    return float(10 * power)


def _number(value: float) -> str:
    if value >= 1_000_000:
        return f"{value / 1_000_000:g}M"
    if value >= 1_000:
        return f"{value / 1_000:g}k"
    return f"{value:g}"


def _frame(title: str, top: float, days: Sequence[str], ceiling: float, unit: str) -> list[str]:
    """Title, horizontal grid with the y labels, and every few days' label."""
    bottom = top + MARGIN_TOP + PLOT_HEIGHT
    parts = [
        f'<text x="{MARGIN_LEFT}" y="{top + 18}" {TITLE_FONT} font-weight="bold">'
        f"{escape(title)}</text>"
    ]
    for tick in range(5):
        value = ceiling * tick / 4
        y = bottom - PLOT_HEIGHT * tick / 4
        parts.append(
            f'<line x1="{MARGIN_LEFT}" y1="{y:.1f}" x2="{MARGIN_LEFT + PLOT_WIDTH}" '
            f'y2="{y:.1f}" stroke="#ddd"/>'
            f'<text x="{MARGIN_LEFT - 6}" y="{y + 4:.1f}" {FONT} text-anchor="end">'
            f"{_number(value)}</text>"
        )
    parts.append(
        f'<text x="12" y="{top + MARGIN_TOP + PLOT_HEIGHT / 2:.1f}" {FONT} '
        f'transform="rotate(-90 12 {top + MARGIN_TOP + PLOT_HEIGHT / 2:.1f})" '
        f'text-anchor="middle">{escape(unit)}</text>'
    )
    slot = PLOT_WIDTH / max(len(days), 1)
    every = max(1, math.ceil(len(days) / 8))
    for index, day in enumerate(days):
        last = index == len(days) - 1
        if last or (index % every == 0 and len(days) - 1 - index >= every / 2):
            x = MARGIN_LEFT + slot * (index + 0.5)
            parts.append(
                f'<text x="{x:.1f}" y="{bottom + 16:.1f}" {FONT} text-anchor="middle">'
                f"{escape(day[5:])}</text>"
            )
    return parts


def _legend(names: Sequence[str], top: float) -> list[str]:
    x = WIDTH - MARGIN_RIGHT + 12
    parts = []
    for index, name in enumerate(names[:12]):
        y = top + MARGIN_TOP + 14 * index
        colour = PALETTE[index % len(PALETTE)]
        label = name if len(name) <= 18 else name[:17] + "…"
        parts.append(
            f'<rect x="{x}" y="{y}" width="10" height="10" fill="{colour}"/>'
            f'<text x="{x + 14}" y="{y + 9}" {FONT}>{escape(label)}</text>'
        )
    return parts


def stacked_bars(
    title: str, days: Sequence[str], series: Mapping[str, Sequence[float]], unit: str, top: float
) -> list[str]:
    """One panel: a bar per day, each series stacked in order."""
    totals = [sum(values[i] for values in series.values()) for i in range(len(days))]
    ceiling = nice_ceiling(max(totals, default=0))
    parts = _frame(title, top, days, ceiling, unit)
    bottom = top + MARGIN_TOP + PLOT_HEIGHT
    slot = PLOT_WIDTH / max(len(days), 1)
    bar = max(slot * 0.7, 1.0)
    for index in range(len(days)):
        base = bottom
        for number, (name, values) in enumerate(series.items()):
            value = values[index]
            if value <= 0:
                continue
            height = PLOT_HEIGHT * value / ceiling
            base -= height
            parts.append(
                f'<rect class="bar" x="{MARGIN_LEFT + slot * index + (slot - bar) / 2:.1f}" '
                f'y="{base:.1f}" width="{bar:.1f}" height="{height:.1f}" '
                f'fill="{PALETTE[number % len(PALETTE)]}">'
                f"<title>{escape(days[index])} {escape(name)}: {value:g}</title></rect>"
            )
    if not any(totals):
        parts.append(_empty(top))
    return parts + _legend(list(series), top)


def lines(
    title: str,
    days: Sequence[str],
    series: Mapping[str, Sequence[float | None]],
    unit: str,
    top: float,
) -> list[str]:
    """One panel: a line per series (a day without a value breaks the line)."""
    values = [v for each in series.values() for v in each if v is not None]
    ceiling = nice_ceiling(max(values, default=0))
    parts = _frame(title, top, days, ceiling, unit)
    bottom = top + MARGIN_TOP + PLOT_HEIGHT
    slot = PLOT_WIDTH / max(len(days), 1)
    for number, (name, points) in enumerate(series.items()):
        colour = PALETTE[number % len(PALETTE)]
        runs: list[list[str]] = [[]]
        for index, value in enumerate(points):
            if value is None:
                runs.append([])  # a day without a turn breaks the line
                continue
            x = MARGIN_LEFT + slot * (index + 0.5)
            y = bottom - PLOT_HEIGHT * value / ceiling
            runs[-1].append(f"{x:.1f},{y:.1f}")
            parts.append(
                f'<circle class="point" cx="{x:.1f}" cy="{y:.1f}" r="2.5" fill="{colour}">'
                f"<title>{escape(days[index])} {escape(name)}: {value:g}</title></circle>"
            )
        parts.extend(
            f'<polyline points="{" ".join(run)}" fill="none" stroke="{colour}" stroke-width="1.5"/>'
            for run in runs
            if len(run) > 1
        )
    if not values:
        parts.append(_empty(top))
    return parts + _legend(list(series), top)


def _empty(top: float) -> str:
    x = MARGIN_LEFT + PLOT_WIDTH / 2
    y = top + PANEL_HEIGHT / 2
    return f'<text x="{x:.1f}" y="{y:.1f}" {FONT} text-anchor="middle" fill="#888">no data</text>'


def svg(panels: Sequence[list[str]], *, label: str) -> str:
    """Panels stacked one above the other in one standalone SVG document."""
    height = PANEL_HEIGHT * len(panels)
    body = "".join(part for panel in panels for part in panel)
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
        f'viewBox="0 0 {WIDTH} {height}" role="img" aria-label="{escape(label)}">'
        f'<rect width="{WIDTH}" height="{height}" fill="#fff"/>{body}</svg>'
    )


def usage_chart(per_day: Mapping[str, Any]) -> str:
    """Tokens and requests per day, stacked by provider or model (`UsageDays.per_day`)."""
    days, by = per_day["days"], per_day["by"]
    return svg(
        [
            stacked_bars(f"Tokens per day by {by}", days, per_day["tokens"], "tokens", 0),
            stacked_bars(
                f"Requests per day by {by}", days, per_day["requests"], "requests", PANEL_HEIGHT
            ),
        ],
        label=f"tokens and requests per day by {by}",
    )


def errors_chart(errors: Mapping[str, Any]) -> str:
    """Failed turns by error type and rejections by window, per day."""
    return svg(
        [stacked_bars("Errors per day by type", errors["days"], errors["counts"], "turns", 0)],
        label="errors per day by type",
    )


def latency_chart(latency: Mapping[str, Any]) -> str:
    """Completed turns' latency p50 and p99 per day."""
    series = {"p50": latency["p50_ms"], "p99": latency["p99_ms"]}
    return svg(
        [lines("Turn latency per day (ms)", latency["days"], series, "ms", 0)],
        label="turn latency p50 and p99 per day",
    )
