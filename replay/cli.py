"""The `llm-replay` command: rebuild, verify, state, audit, tail, export and erase.

It connects exactly like `llm-es` (`--nats-url`, `--config` with the `nats`
section for user/password, token, creds and TLS, the `LLM_ES_NATS_*`
environment variables), so it works against the embedded server of a running
`llm-es serve` (nats://127.0.0.1:4222) or any cluster. The config also sets
what the views depend on (context size, rate limits): pass the plugin's.

Exit codes: 0 ok; 1 `verify` found differences; 2 bad usage (flags, unknown
user/channel/projection, unreadable time); 3 NATS, the log or the views
unavailable; 130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import pathlib
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import TextIO

import nats.errors
import orjson

from llm_es import __version__
from llm_es.cli_options import CommonOptions, start_logging
from llm_es.config import Config
from llm_es.domain.events import EVENT_TYPES
from llm_es.domain.usage_days import USAGE_GROUPINGS, UsageDays
from llm_es.errors import ConfigError
from replay.audit import GROUPINGS, run_audit
from replay.audit_output import FORMATS, render
from replay.connecting import ConnectRecipe, connect
from replay.erase import run_erase
from replay.errors import (
    EXIT_DIFFERENCES,
    EXIT_OK,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    ReplayError,
    UsageError,
)
from replay.output import LineWriter
from replay.plot import check_plot_path, write_plot
from replay.progress import Progress
from replay.reading import EventLog, event_filter
from replay.rebuild import run_rebuild
from replay.schemas import run_schemas
from replay.state import Moment, channel_state, render_channel, render_user, user_state
from replay.tail import run_export, run_tail
from replay.times import TIME_HELP, parse_moment
from replay.verify import run_verify

PROG = "llm-replay"
COMMON_OPTIONS = CommonOptions(
    config_help="the plugin's config.json",
    nats_url_fallback="nats://127.0.0.1:4222 (the embedded server of llm-es serve)",
    log_level_help="DEBUG, INFO, WARNING (default) or ERROR",
)


def _whole_number(minimum: int) -> Callable[[str], int]:
    """An argparse type: a whole number of at least `minimum`."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be {minimum} or more, not {value}")
        return value

    return parse


_positive = _whole_number(1)
_not_negative = _whole_number(0)


def _name(text: str) -> str:
    if not text:
        raise argparse.ArgumentTypeError("must not be empty")
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Rebuild, verify, inspect, audit and follow the llm-es event log.",
        epilog="Times: " + TIME_HELP + ". Exit codes: 0 ok, 1 verify found differences, "
        "2 bad usage, 3 NATS/log/views unavailable.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    COMMON_OPTIONS.add_to(parser, top=True)

    def progress_flag(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--no-progress", action="store_true", help="no progress on stderr")

    rebuild = commands.add_parser(
        "rebuild", help="fold the log into fresh views and switch to them (blue/green)"
    )
    COMMON_OPTIONS.add_to(rebuild)
    rebuild.add_argument(
        "--projection",
        action="append",
        default=[],
        metavar="NAME",
        help="rebuild only this view (context, memories, settings, usage); repeatable",
    )
    rebuild.add_argument(
        "--dry-run", action="store_true", help="fold and compare with the live views; write nothing"
    )
    rebuild.add_argument("--json", action="store_true", help="print the report as JSON")
    progress_flag(rebuild)

    verify = commands.add_parser("verify", help="diff the live views against the log")
    COMMON_OPTIONS.add_to(verify)
    verify.add_argument("--json", action="store_true", help="print the report as JSON")
    verify.add_argument(
        "--max-diffs", type=_not_negative, default=20, help="differences shown (default 20)"
    )
    progress_flag(verify)

    state = commands.add_parser("state", help="a channel's or user's state at a past moment")
    COMMON_OPTIONS.add_to(state)
    who = state.add_mutually_exclusive_group(required=True)
    who.add_argument("--channel", type=_name, help="context, persona and memories of a channel")
    who.add_argument("--user", type=_name, help="usage and limits of a user")
    when = state.add_mutually_exclusive_group()
    when.add_argument("--at", metavar="TIME", help="as it was at this time")
    when.add_argument("--seq", type=_positive, metavar="N", help="as it was after sequence N")
    state.add_argument("--json", action="store_true", help="print JSON")

    audit = commands.add_parser("audit", help="usage per user: requests, tokens, cost")
    COMMON_OPTIONS.add_to(audit)
    scope = audit.add_mutually_exclusive_group(required=True)
    scope.add_argument("--user", type=_name, help="one user's usage")
    scope.add_argument("--all", action="store_true", help="every user, ranked by tokens")
    audit.add_argument("--since", metavar="TIME", help="from this time (inclusive)")
    audit.add_argument("--until", metavar="TIME", help="up to this time (exclusive)")
    audit.add_argument(
        "--by",
        choices=GROUPINGS,
        help="group rows by (default: day for --user, none for --all)",
    )
    audit.add_argument("--format", choices=FORMATS, default="table", help="default table")
    audit.add_argument("--limit", type=_positive, help="with --all: only the top N users")
    audit.add_argument(
        "--plot",
        type=pathlib.Path,
        metavar="FILE",
        help="also draw tokens and requests per day (the dashboard's chart) into FILE.svg or"
        " FILE.png: the --since/--until days, else the last 30",
    )
    audit.add_argument(
        "--plot-by",
        choices=USAGE_GROUPINGS,
        default="provider",
        help="stack the plot's bars by provider (default) or model",
    )
    progress_flag(audit)

    erase = commands.add_parser(
        "erase", help="right to erasure: destroy the keys sealing a user's words"
    )
    COMMON_OPTIONS.add_to(erase)
    erase.add_argument("--user", type=_name, required=True, help="the user to erase")
    erase.add_argument("--json", action="store_true", help="print the report as JSON")

    def selection_flags(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--channel", type=_name, help="only this channel's events")
        sub.add_argument("--user", type=_name, help="only this user's events")
        sub.add_argument(
            "--type",
            action="append",
            default=[],
            choices=sorted(EVENT_TYPES),
            metavar="TYPE",
            help="only events of this type (repeatable): " + ", ".join(sorted(EVENT_TYPES)),
        )

    tail = commands.add_parser(
        "tail", help="follow the log, one line per event (new events unless a start is given)"
    )
    COMMON_OPTIONS.add_to(tail)
    selection_flags(tail)
    start = tail.add_mutually_exclusive_group()
    start.add_argument("--since", metavar="TIME", help="start with events from this time")
    start.add_argument("--from-seq", type=_positive, metavar="N", help="start at sequence N")
    tail.add_argument("--json", action="store_true", help="one JSON object per line")
    tail.add_argument("--limit", type=_positive, metavar="N", help="stop after N events")
    tail.add_argument(
        "--no-follow",
        action="store_true",
        help="stop at the end of the log instead of waiting (with no start: the whole selection)",
    )

    export = commands.add_parser("export", help="the raw log as JSON lines")
    COMMON_OPTIONS.add_to(export)
    selection_flags(export)
    export.add_argument("--format", choices=("jsonl",), default="jsonl", help="jsonl (default)")
    export.add_argument("--since", metavar="TIME", help="events from this time (inclusive)")
    export.add_argument("--until", metavar="TIME", help="events before this time")
    export.add_argument("--from-seq", type=_positive, metavar="N", help="from sequence N")
    export.add_argument("--to-seq", type=_positive, metavar="N", help="up to sequence N")
    export.add_argument(
        "--output", type=pathlib.Path, metavar="FILE", help="write here instead of stdout"
    )
    export.add_argument(
        "--quarantined",
        action="store_true",
        help="only the quarantined events (left out otherwise), each with its reason",
    )

    schemas = commands.add_parser(
        "schemas", help="JSON Schemas of the events (for programs reading the log)"
    )
    action = schemas.add_mutually_exclusive_group()
    action.add_argument("--write", type=pathlib.Path, metavar="DIR", help="write them into DIR")
    action.add_argument(
        "--check", type=pathlib.Path, metavar="DIR", help="check DIR against the code"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    start_logging(args.log_level, default="WARNING", closes_own_connection=True)
    if args.command == "schemas":
        return run_schemas(args)
    recipe = ConnectRecipe(args.config, args.nats_url, args.data_dir)
    try:
        config = recipe.load_config()
    except ConfigError as exc:
        return _fail(str(exc), EXIT_USAGE)
    try:
        return asyncio.run(run(args, recipe, config))
    except KeyboardInterrupt:
        return 130
    except ReplayError as exc:
        return _fail(str(exc), exc.exit_code)


def _fail(message: str, code: int) -> int:
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)
    return code


async def run(args: argparse.Namespace, recipe: ConnectRecipe, config: Config) -> int:
    """Parse what needs no server, connect, and run the command."""
    now = datetime.now(UTC)

    def moment(option: str) -> datetime | None:
        text = getattr(args, option, None)
        return None if text is None else parse_moment(text, now=now, option=f"--{option}")

    times = {name: moment(name) for name in ("since", "until", "at")}
    nc = await connect(config, recipe)
    try:
        # Rebuild and verify read a long log in a child process that connects the same way.
        return await dispatch(args, config, EventLog(nc, recipe=recipe), times)
    except (nats.errors.Error, TimeoutError) as exc:
        return _fail(f"NATS failed: {type(exc).__name__}: {exc}", EXIT_UNAVAILABLE)
    finally:
        with contextlib.suppress(nats.errors.Error, OSError):
            await nc.close()


async def dispatch(
    args: argparse.Namespace,
    config: Config,
    log: EventLog,
    times: dict[str, datetime | None],
) -> int:
    """Run the command: one report written at the end, or `tail`'s and `export`'s lines."""
    show_progress = not getattr(args, "no_progress", True)

    def progress(label: str, total: int) -> Progress:
        return Progress(label, total, enabled=show_progress)

    code = EXIT_OK
    if args.command == "rebuild":
        report = await run_rebuild(
            log,
            config,
            projection_names=args.projection,
            dry_run=args.dry_run,
            progress=progress,
        )
        text = _json(report.as_dict()) if args.json else report.render()
    elif args.command == "verify":
        checked = await run_verify(log, config, progress=progress)
        text = _json(checked.as_dict()) if args.json else checked.render(args.max_diffs)
        code = EXIT_OK if checked.ok else EXIT_DIFFERENCES
    elif args.command == "state":
        when = Moment(seq=args.seq, at=times["at"])
        if args.channel is not None:
            found = await channel_state(log, config, args.channel, when)
            text = _json(found) if args.json else render_channel(found)
        else:
            found = await user_state(log, config, args.user, when)
            text = _json(found) if args.json else render_user(found)
    elif args.command == "erase":
        erased = await run_erase(log, args.user)
        text = _json(erased.as_dict()) if args.json else erased.render()
    elif args.command == "audit":
        days = None
        if args.plot is not None:
            check_plot_path(args.plot)
            days = UsageDays()
        with progress("audit", 0) as bar:
            audited = await run_audit(
                log,
                user=None if args.all else args.user,
                by=args.by if args.by is not None or args.all else "day",
                since=times["since"],
                until=times["until"],
                limit=args.limit,
                progress=bar,
                days=days,
            )
        if days is not None:
            shown = await write_plot(
                args.plot, days, by=args.plot_by, since=times["since"], until=times["until"]
            )
            print(f"plot: {args.plot} ({shown[0]} to {shown[-1]})", file=sys.stderr)
        text = render(audited, args.format)
    else:
        await _tail_or_export(args, log, times)
        return EXIT_OK
    out = LineWriter()
    await out.line(text)
    await out.flush()
    return code


async def _tail_or_export(
    args: argparse.Namespace, log: EventLog, times: dict[str, datetime | None]
) -> None:
    """`tail` or `export` (argparse admits no other command here): lines written as read."""
    assert args.command in ("tail", "export"), args.command
    selection = dataclasses.replace(
        event_filter(channel=args.channel, user=args.user, types=args.type),
        from_seq=args.from_seq or 1,
    )
    if args.command == "tail":
        if args.from_seq is None and times["since"] is None:
            selection = dataclasses.replace(selection, new_only=not args.no_follow)
        await run_tail(
            log,
            selection,
            LineWriter(),
            as_json=args.json,
            since=times["since"],
            limit=args.limit,
            follow=not args.no_follow,
        )
        return
    if times["since"] and times["until"] and times["until"] <= times["since"]:
        raise UsageError("--until must be after --since")
    if args.to_seq is not None:
        selection = dataclasses.replace(selection, to_seq=args.to_seq)
    stream = None if args.output is None else await asyncio.to_thread(_open_output, args.output)
    try:
        await run_export(
            log,
            selection,
            LineWriter(stream),
            since=times["since"],
            until=times["until"],
            quarantined=args.quarantined,
        )
    finally:
        if stream is not None:
            await asyncio.to_thread(stream.close)


def _open_output(path: pathlib.Path) -> TextIO:
    try:
        return path.open("w", encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"--output {path}: {exc.strerror or exc}") from exc


def _json(value: object) -> str:
    return orjson.dumps(value, option=orjson.OPT_INDENT_2).decode()
