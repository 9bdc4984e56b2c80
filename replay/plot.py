"""`audit --plot`: the dashboard's per-day usage chart written to an SVG or PNG file.

The figures are the audit's own (`UsageDays`, fed the events the audit reads)
and the drawing is the dashboard's (`llm_es.charts.usage_chart`), so a report
shows what the page shows. PNG is the same SVG rasterised by CairoSVG, an
optional dependency (`pip install 'llm-es[png]'`, and the cairo library).
"""

from __future__ import annotations

import asyncio
import pathlib
from datetime import UTC, date, datetime, timedelta

from llm_es.charts import usage_chart
from llm_es.domain.usage_days import UsageDays, day_range
from replay.errors import UsageError

PLOT_FORMATS = (".svg", ".png")
DEFAULT_DAYS = 30
MAX_DAYS = 366
PNG_NEEDS = (
    "PNG needs CairoSVG and the cairo library: pip install 'llm-es[png]' "
    "(Debian: apt-get install libcairo2), or write an .svg"
)


def check_plot_path(path: pathlib.Path) -> None:
    """Refuse, before any read, a file name that is neither .svg nor .png."""
    if path.suffix.lower() not in PLOT_FORMATS:
        raise UsageError(f"--plot {path}: the file name must end in .svg or .png")


def plotted_days(since: datetime | None, until: datetime | None, today: date) -> list[str]:
    """The days charted: those of --since/--until, else the 30 up to --until's day or today."""
    last = today if until is None else (until - timedelta(microseconds=1)).astimezone(UTC).date()
    if since is None:
        return day_range(last, DEFAULT_DAYS)
    first = since.astimezone(UTC).date()
    count = (last - first).days + 1
    if count > MAX_DAYS:
        raise UsageError(f"--plot draws at most {MAX_DAYS} days; --since is {count} days back")
    return day_range(last, max(count, 1))


def _png(svg: str) -> bytes:
    try:
        import cairosvg  # optional: only a PNG plot needs it
    except (ImportError, OSError):
        raise UsageError(PNG_NEEDS) from None
    png: bytes = cairosvg.svg2png(bytestring=svg.encode())
    return png


def _write(path: pathlib.Path, data: bytes) -> None:
    try:
        path.write_bytes(data)
    except OSError as exc:
        raise UsageError(f"--plot {path}: {exc.strerror or exc}") from exc


async def write_plot(
    path: pathlib.Path,
    days: UsageDays,
    *,
    by: str,
    since: datetime | None,
    until: datetime | None,
) -> list[str]:
    """Draw the chart into `path` (off the loop); returns the days it covers."""
    shown = plotted_days(since, until, datetime.now(UTC).date())
    svg = usage_chart(days.per_day(by, shown))
    if path.suffix.lower() == ".png":
        data = await asyncio.to_thread(_png, svg)
    else:
        data = svg.encode()
    await asyncio.to_thread(_write, path, data)
    return shown
