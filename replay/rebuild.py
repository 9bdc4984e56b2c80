"""`rebuild`: fold the whole log into a fresh views bucket, then switch to it (blue/green).

The live bucket is never touched: the new generation (`llm_data_2`,
`llm_data_3`, ...) is written completely, checkpoints last, and only then
does the pointer `views.active` in bucket `llm_meta` move to it, with a
compare-and-set so two rebuilds cannot both win. Running `llm-es` instances
watch the pointer, fold the events appended since the rebuild's checkpoint
into the new bucket beside their live views, and swap when it has caught up.
The previous generation is kept (instances that have not switched yet still
write there); the one before it is deleted.

With `--projection`, only those views are folded again; the others are
copied from the live bucket with their checkpoints. `--dry-run` folds and
compares with the live views, and writes nothing.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import nats.errors
import orjson
from nats.js import JetStreamContext
from nats.js.errors import KeyValueError, NotFoundError

from llm_es.config import Config
from llm_es.domain.events import iso_utc
from llm_es.domain.views import (
    ACTIVE_VIEWS_KEY,
    BUCKET,
    ActiveViews,
    checkpoint_key,
)
from llm_es.errors import OperationalError
from llm_es.store.stream_settings import wait_for_leader
from projections.base import View
from projections.buckets import checkpoint_value, ensure_meta_bucket, views_bucket_config
from replay.buckets import active_views, key_kinds, load_bucket, normalized
from replay.errors import LogUnavailable
from replay.fold import fold_log, select_projections
from replay.progress import Progress
from replay.reading import EventLog

WRITE_WINDOW = 2000
"""KV writes in flight at once (pipelined publishes, acks awaited per window)."""
WRITE_TIMEOUT_SECONDS = 60.0

ProgressFactory = Callable[[str, int], Progress]


def bucket_for_generation(generation: int) -> str:
    """Generation 1 is the original `llm_data`; later ones are `llm_data_<n>`."""
    return BUCKET if generation <= 1 else f"{BUCKET}_{generation}"


@dataclass(kw_only=True)
class RebuildReport:
    """What a rebuild did, for people (`render`) and scripts (`as_dict`, in field order)."""

    bucket: str
    previous: str
    generation: int
    projections: list[str]
    log_end: int
    events: int
    skipped: int
    skips: list[tuple[int, str]] = field(default_factory=list)
    keys: dict[str, int]
    dry_run: bool
    switched: bool = False
    deleted: str | None = None
    changes: dict[str, int] | None = None
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def events_per_s(self) -> float:
        total = self.seconds.get("total", 0.0)
        return round(self.log_end / total, 1) if total > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            **dataclasses.asdict(self),
            "skips": [{"seq": s, "error": e} for s, e in self.skips],
            "events_per_s": self.events_per_s,
        }

    def render(self) -> str:
        keys = ", ".join(f"{kind} {count:,}" for kind, count in self.keys.items())
        lines = [
            f"folded {self.events:,} events (log sequences 1..{self.log_end:,}) "
            f"into {', '.join(self.projections)} in {self.seconds.get('fold', 0):.1f}s",
            f"views: {keys or 'none'}",
        ]
        if self.skipped:
            lines.append(f"quarantined (skipped, as the plugin does): {self.skipped:,}")
            lines += [f"  seq {s}: {e}" for s, e in self.skips]
        if self.dry_run:
            changes = self.changes or {}
            lines.append(
                f"dry run: against the live views in {self.previous}: "
                f"{changes.get('added', 0):,} keys would be added, "
                f"{changes.get('changed', 0):,} changed, {changes.get('removed', 0):,} removed, "
                f"{changes.get('unchanged', 0):,} unchanged; nothing written"
            )
        else:
            lines.append(
                f"wrote {sum(self.keys.values()):,} keys to {self.bucket} "
                f"in {self.seconds.get('write', 0):.1f}s"
            )
            if self.switched:
                lines.append(
                    f"switched: the live views are now {self.bucket} (was {self.previous}); "
                    "running llm-es instances follow within seconds"
                )
            if self.deleted:
                lines.append(f"deleted the old generation {self.deleted}")
        lines.append(
            f"total {self.seconds.get('total', 0):.1f}s, {self.events_per_s:,.0f} events/s"
        )
        return "\n".join(lines)


async def run_rebuild(
    log: EventLog,
    config: Config,
    *,
    projection_names: Sequence[str] = (),
    dry_run: bool = False,
    progress: ProgressFactory | None = None,
) -> RebuildReport:
    """Rebuild the views (all, or the named projections) into a new bucket and switch to it."""
    started = time.perf_counter()
    js = log.js
    projections = select_projections(config, projection_names)
    every_projection = select_projections(config)
    partial = len(projections) < len(every_projection)
    active = await active_views(js)
    end = await log.end()

    bar = progress("rebuild", end) if progress else Progress("rebuild", end, enabled=False)
    with bar:
        fold = await fold_log(log, projections, end, progress=bar)
    folded_at = time.perf_counter()

    values: dict[str, View] = dict(fold.values)
    # The turns open at `end` go with the checkpoints: the plugin's fold resumes there.
    rebuilt_checkpoint = checkpoint_value(end, fold.open_turns.snapshot())
    checkpoints = {p.name: rebuilt_checkpoint for p in projections}
    live = await load_bucket(js, active.bucket) if partial or dry_run else {}
    if partial:
        chosen = {p.name for p in projections}
        kept = [p for p in every_projection if p.name not in chosen]
        for key, raw in live.items():
            if any(key.startswith(p.key_prefix) for p in kept):
                values[key] = orjson.loads(raw)
        for projection in kept:
            stored = live.get(checkpoint_key(projection.name))
            checkpoints[projection.name] = orjson.loads(stored) if stored else {"seq": 0}

    generation = active.generation + 1
    report = RebuildReport(
        bucket=bucket_for_generation(generation),
        previous=active.bucket,
        generation=generation,
        projections=[p.name for p in projections],
        log_end=end,
        events=fold.events,
        skipped=fold.skipped,
        skips=fold.skips,
        keys=key_kinds(values),
        dry_run=dry_run,
    )
    report.seconds["fold"] = round(folded_at - started, 3)
    if dry_run:
        report.changes = compare_with_live(values, live, [p.key_prefix for p in projections])
        report.seconds["total"] = round(time.perf_counter() - started, 3)
        return report

    replicas = await _generation_replicas(js, active, config.nats.replicas)
    await _write_generation(js, report.bucket, active, values, checkpoints, replicas=replicas)
    written_at = time.perf_counter()
    report.seconds["write"] = round(written_at - folded_at, 3)
    await _switch(js, active, report, replicas=config.nats.replicas)
    report.switched = True
    report.deleted = await _delete_old_generation(js, active)
    report.seconds["switch"] = round(time.perf_counter() - written_at, 3)
    report.seconds["total"] = round(time.perf_counter() - started, 3)
    return report


def compare_with_live(
    values: Mapping[str, View], live: Mapping[str, bytes], prefixes: Sequence[str]
) -> dict[str, int]:
    """How many keys of the given views a switch would add, change, remove or keep."""
    changes = {"added": 0, "changed": 0, "removed": 0, "unchanged": 0}
    for key, value in values.items():
        raw = live.get(key)
        if raw is None:
            changes["added"] += 1
        elif orjson.loads(raw) == normalized(value):
            changes["unchanged"] += 1
        else:
            changes["changed"] += 1
    for key in live:
        if key not in values and key.startswith(tuple(prefixes)):
            changes["removed"] += 1
    return changes


async def _write_generation(
    js: JetStreamContext,
    bucket: str,
    active: ActiveViews,
    values: Mapping[str, View],
    checkpoints: Mapping[str, View],
    *,
    replicas: int,
) -> None:
    """Create `bucket` afresh and write the views, then the checkpoints that cover them."""
    if bucket == active.bucket:
        raise LogUnavailable(f"refusing to overwrite the live views bucket {bucket}")
    try:
        # Left by a rebuild that stopped before switching: never live, safe to drop.
        await _drop(js, bucket)
        await js.create_key_value(views_bucket_config(bucket, replicas=replicas))
        await wait_for_leader(js, f"KV_{bucket}")
        await publish_values(js, bucket, ((k, orjson.dumps(v)) for k, v in values.items()))
        await publish_values(
            js,
            bucket,
            (
                (checkpoint_key(name), orjson.dumps(checkpoint))
                for name, checkpoint in checkpoints.items()
            ),
        )
    except (nats.errors.Error, KeyValueError, TimeoutError, OperationalError) as exc:
        raise LogUnavailable(f"cannot write the views bucket {bucket}: {exc!r}") from exc


async def publish_values(
    js: JetStreamContext, bucket: str, items: Iterable[tuple[str, bytes]]
) -> None:
    """Put keys into a KV bucket with pipelined publishes; every ack is checked."""
    pending: list[asyncio.Future[Any]] = []
    for key, payload in items:
        pending.append(await js.publish_async(f"$KV.{bucket}.{key}", payload))
        if len(pending) >= WRITE_WINDOW:
            await _settle(pending)
            pending = []
    await _settle(pending)


async def _settle(pending: list[asyncio.Future[Any]]) -> None:
    async with asyncio.timeout(WRITE_TIMEOUT_SECONDS):
        await asyncio.gather(*pending)


async def _generation_replicas(js: JetStreamContext, active: ActiveViews, wanted: int) -> int:
    """Replicas of the new generation: `nats.replicas`, or the live bucket's when an
    operator raised those higher (a rebuild never quietly lowers them)."""
    try:
        live = await js.stream_info(f"KV_{active.bucket}")
    except NotFoundError:
        return wanted
    except (nats.errors.Error, TimeoutError) as exc:
        raise LogUnavailable(f"cannot read the views bucket {active.bucket}: {exc!r}") from exc
    return max(wanted, live.config.num_replicas or 1)


async def _switch(
    js: JetStreamContext, active: ActiveViews, report: RebuildReport, *, replicas: int
) -> None:
    """Move the pointer to the new bucket, only if nobody moved it since the rebuild began."""
    pointer = orjson.dumps(
        {
            "bucket": report.bucket,
            "generation": report.generation,
            "seq": report.log_end,
            "projections": report.projections,
            "switched_at": iso_utc(datetime.now(UTC)),
        }
    )
    try:
        meta = await ensure_meta_bucket(js, replicas=replicas)
        if active.revision == 0:
            await meta.create(ACTIVE_VIEWS_KEY, pointer)
        else:
            await meta.update(ACTIVE_VIEWS_KEY, pointer, last=active.revision)
    except KeyValueError as exc:
        await _drop(js, report.bucket)
        raise LogUnavailable(
            "another rebuild switched the views while this one ran; nothing switched "
            f"({exc.description or type(exc).__name__}); run it again"
        ) from exc
    except (nats.errors.Error, TimeoutError) as exc:
        raise LogUnavailable(f"cannot switch the views pointer: {exc!r}") from exc


async def _delete_old_generation(js: JetStreamContext, active: ActiveViews) -> str | None:
    """Delete the generation before the one just replaced (that one stays for stragglers)."""
    if active.generation < 2:
        return None
    old = bucket_for_generation(active.generation - 1)
    return old if await _drop(js, old) else None


async def _drop(js: JetStreamContext, bucket: str) -> bool:
    try:
        await js.delete_key_value(bucket)
    except (nats.errors.Error, TimeoutError):  # gone already, or not now: nothing dropped
        return False
    return True
