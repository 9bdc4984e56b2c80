"""`verify`: fold the whole log in memory and diff it against the live views.

The live bucket is read first. Its checkpoints say up to which sequence every
view is written; values written past a checkpoint (the runner writes values,
then checkpoints) are compared too, by folding up to the newest sequence any
value records. A key the runner has simply not written yet (its rebuilt value
comes from an event after the checkpoint) is `pending`, not a difference.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from llm_es.config import Config
from llm_es.domain.views import checkpoint_key
from projections.base import Projection
from replay.buckets import active_views, load_bucket, normalized, require_bucket
from replay.fold import fold_log, select_projections
from replay.progress import Progress
from replay.reading import EventLog

SHOWN_CHARS = 300
MISSING = "(missing)"
MAX_SEQUENCES_SHOWN = 20


@dataclass(frozen=True, slots=True)
class Difference:
    """One key whose live value is not what the log folds to (None: no such key)."""

    key: str
    live: Any
    rebuilt: Any

    def as_dict(self) -> dict[str, Any]:
        return {"key": self.key, "live": self.live, "rebuilt": self.rebuilt}


@dataclass
class VerifyReport:
    """The outcome of one comparison."""

    bucket: str
    log_end: int
    checkpoint: int
    folded_to: int
    compared: int = 0
    equal: int = 0
    pending: int = 0
    skipped: int = 0
    quarantined: list[int] = field(default_factory=list)
    """Sequences of the events skipped (the first `MAX_LISTED`), as the plugin skips them."""
    differences: list[Difference] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.differences

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "bucket": self.bucket,
            "log_end": self.log_end,
            "checkpoint": self.checkpoint,
            "folded_to": self.folded_to,
            "compared": self.compared,
            "equal": self.equal,
            "pending": self.pending,
            "skipped_events": self.skipped,
            "quarantined": {"count": self.skipped, "sequences": self.quarantined},
            "differing": len(self.differences),
            "differences": [d.as_dict() for d in self.differences],
        }

    def render(self, max_shown: int = 20) -> str:
        where = (
            f"bucket {self.bucket}, views at sequence {self.checkpoint:,}, log at {self.log_end:,}"
        )
        lines: list[str] = []
        if self.ok:
            lines.append(f"views match the log: {self.compared:,} keys equal ({where})")
        else:
            lines.append(
                f"views differ from the log: {len(self.differences):,} of {self.compared:,} "
                f"keys ({where})"
            )
            for difference in self.differences[:max_shown]:
                lines += list(describe(difference))
            hidden = len(self.differences) - max_shown
            if hidden > 0:
                lines.append(f"... and {hidden:,} more (--max-diffs N shows more, --json all)")
            lines.append("fix: llm-replay rebuild (folds the log into fresh views and switches)")
        if self.pending:
            lines.append(
                f"{self.pending:,} keys not compared: their last events come after the "
                "views' checkpoint (the plugin has not written them yet)"
            )
        if self.skipped:
            lines.append(
                f"quarantined (skipped, as the plugin skips them): {self.skipped:,}, "
                f"seq {_sequences(self.quarantined, self.skipped)}"
            )
            lines.append("see them: llm-replay export --quarantined")
        return "\n".join(lines)


def _sequences(listed: Sequence[int], count: int) -> str:
    shown = ", ".join(map(str, listed[:MAX_SEQUENCES_SHOWN]))
    hidden = count - min(len(listed), MAX_SEQUENCES_SHOWN)
    return shown + (f" and {hidden:,} more (--json lists more)" if hidden > 0 else "")


def describe(difference: Difference) -> Iterator[str]:
    """Readable lines for one difference: the key, then field by field when both are objects."""
    yield difference.key
    live, rebuilt = difference.live, difference.rebuilt
    if isinstance(live, dict) and isinstance(rebuilt, dict):
        for name in sorted(live.keys() | rebuilt.keys()):
            if live.get(name, MISSING) != rebuilt.get(name, MISSING):
                yield f"  {name}: live {_show(live.get(name, MISSING))}"
                yield f"  {' ' * len(name)}  rebuilt {_show(rebuilt.get(name, MISSING))}"
        return
    yield f"  live    {_show(MISSING if live is None else live)}"
    yield f"  rebuilt {_show(MISSING if rebuilt is None else rebuilt)}"


def _show(value: Any) -> str:
    text = value if value == MISSING else orjson.dumps(value).decode()
    return text if len(text) <= SHOWN_CHARS else text[: SHOWN_CHARS - 1] + "…"


async def run_verify(
    log: EventLog,
    config: Config,
    *,
    progress: Callable[[str, int], Progress] | None = None,
) -> VerifyReport:
    """Compare the live views with the log folded in memory."""
    js = log.js
    active = await active_views(js)
    await require_bucket(js, active.bucket)
    stored = await load_bucket(js, active.bucket)
    end = await log.end()
    projections = select_projections(config)
    checkpoints = _checkpoints(stored, projections)
    live: dict[str, Any] = {}
    newest = 0
    for key, raw in stored.items():
        if key.startswith("checkpoint."):
            continue
        try:
            value = orjson.loads(raw)
        except orjson.JSONDecodeError:
            value = {"unreadable": raw[:SHOWN_CHARS].decode("utf-8", "replace")}
        live[key] = value
        if isinstance(value, dict) and isinstance(value.get("seq"), int):
            newest = max(newest, value["seq"])
    lowest = min(checkpoints.values(), default=0)
    target = min(max(lowest, newest), end)
    bar = progress("verify", target) if progress else Progress("verify", target, enabled=False)
    with bar:
        fold = await fold_log(log, projections, target, progress=bar)
    report = VerifyReport(bucket=active.bucket, log_end=end, checkpoint=lowest, folded_to=target)
    report.skipped = fold.skipped
    report.quarantined = sorted(fold.quarantine.sequences)
    compare(report, live, fold.values, fold.removed, checkpoints, projections)
    return report


def _checkpoints(stored: Mapping[str, bytes], projections: Sequence[Projection]) -> dict[str, int]:
    checkpoints = {}
    for projection in projections:
        raw = stored.get(checkpoint_key(projection.name))
        try:
            checkpoints[projection.name] = int(orjson.loads(raw)["seq"]) if raw else 0
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            checkpoints[projection.name] = 0
    return checkpoints


def compare(
    report: VerifyReport,
    live: Mapping[str, Any],
    rebuilt: Mapping[str, Any],
    removed: Mapping[str, int],
    checkpoints: Mapping[str, int],
    projections: Sequence[Projection],
) -> None:
    """Fill `report` with equal, pending and differing keys."""
    lowest = min(checkpoints.values(), default=0)

    def checkpoint_of(key: str) -> int:
        for projection in projections:
            if key.startswith(projection.key_prefix):
                return checkpoints.get(projection.name, lowest)
        return lowest

    for key in sorted(live.keys() | rebuilt.keys()):
        report.compared += 1
        live_value = live.get(key)
        rebuilt_value = rebuilt.get(key)
        expected = None if rebuilt_value is None else normalized(rebuilt_value)
        if live_value == expected:
            report.equal += 1
            continue
        if expected is not None:
            last_event = expected.get("seq", 0) if isinstance(expected, dict) else 0
        else:
            last_event = removed.get(key, 0)
        live_seq = live_value.get("seq", 0) if isinstance(live_value, dict) else 0
        if last_event > checkpoint_of(key) and (live_value is None or live_seq < last_event):
            report.pending += 1
            continue
        report.differences.append(Difference(key, live_value, expected))
