"""The `llm-es` command: `serve` the plugin, `chat` from a terminal, `status` of a deployment.

Exit codes: 0 ok, 1 runtime failure, 2 bad configuration or usage.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import os
import pathlib
import signal
import sys
from collections.abc import Sequence

import nats.errors

from llm_es import __version__
from llm_es.app import Plugin
from llm_es.cli_options import CommonOptions, data_dir, start_logging
from llm_es.config import (
    DEFAULT_CONFIG_JSON,
    LISTEN_EXPECTED,
    Config,
    HttpConfig,
    listen_address,
    load_config_sync,
    redact_url,
    scrub_secrets,
)
from llm_es.embedded import EmbeddedNatsServer
from llm_es.errors import ConfigError, LLMESError, ServerVersionError
from llm_es.local_access import (
    ACCESS_FILE,
    EmbeddedAccess,
    prepare_embedded_access,
    record_url,
    with_local_access,
)
from llm_es.logs import log_kv
from llm_es.store.connection import DEFAULT_LOCAL_URL, connect, connection_secrets

logger = logging.getLogger("llm_es.cli")

DEFAULT_EMBEDDED_PORT = 4222
COMMON_OPTIONS = CommonOptions(
    config_help="config.json",
    nats_url_fallback="the embedded server (serve) or nats://127.0.0.1:4222",
    log_level_help="DEBUG, INFO, WARNING or ERROR (default INFO for serve, WARNING otherwise)",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llm-es", description="Event-sourced LLM chat plugin for NATS-based bots."
    )
    parser.add_argument("--version", action="version", version=f"llm-es {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    COMMON_OPTIONS.add_to(parser, top=True)

    serve = commands.add_parser("serve", help="run the plugin")
    COMMON_OPTIONS.add_to(serve)
    serve.add_argument(
        "--nats-port",
        type=int,
        default=DEFAULT_EMBEDDED_PORT,
        help="port of the embedded nats-server (default 4222; 0 picks a free one)",
    )
    serve.add_argument(
        "--http",
        metavar="HOST:PORT",
        help="serve /metrics here (overrides http.listen; default 127.0.0.1:8642)",
    )

    chat = commands.add_parser("chat", help="chat with the plugin from this terminal")
    COMMON_OPTIONS.add_to(chat)
    chat.add_argument("--channel", default="terminal", help="channel to speak in")
    chat.add_argument("--user", default=os.environ.get("USER", "operator"), help="your name")
    chat.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for replies")

    status = commands.add_parser("status", help="show the event log and the views")
    COMMON_OPTIONS.add_to(status)
    status.add_argument("--json", action="store_true", help="print JSON")

    commands.add_parser("sample-config", help="print the default config.json")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "sample-config":
        print(DEFAULT_CONFIG_JSON)
        return 0
    serving = args.command == "serve"
    start_logging(
        args.log_level, default="INFO" if serving else "WARNING", closes_own_connection=not serving
    )
    try:
        config = load_config_sync(args.config)
    except ConfigError as exc:
        print(f"llm-es: {exc}", file=sys.stderr)
        return 2
    if serving and args.http is not None:
        if listen_address(args.http) is None:
            print(f"llm-es: --http: {LISTEN_EXPECTED}, got {args.http!r}", file=sys.stderr)
            return 2
        config = dataclasses.replace(config, http=HttpConfig(listen=args.http))
    directory = data_dir(args.data_dir)
    try:
        if args.command == "serve":
            return asyncio.run(serve(config, args.nats_url, directory, args.nats_port))
        if args.command == "chat":
            from llm_es.chat_client import run_chat_client

            return asyncio.run(
                run_chat_client(config, args.nats_url, args.channel, args.user, args.timeout)
            )
        from llm_es.status import run_status

        # The embedded server's own user, when no server is named: the log needs it.
        config = with_local_access(config, args.nats_url, directory)
        return asyncio.run(run_status(config, args.nats_url, as_json=args.json))
    except KeyboardInterrupt:
        return 130
    except LLMESError as exc:
        print(f"llm-es: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, ConfigError | ServerVersionError) else 1


def how_clients_connect(access: EmbeddedAccess, data_dir: pathlib.Path) -> str:
    """What `serve` tells about the embedded server's users (never a password)."""
    if access.plugin.token is not None:
        return "clients connect with the token of nats.token (the server requires it)"
    kept = (
        f"its password is in {data_dir / ACCESS_FILE}, which llm-es status and llm-replay "
        "read (--data-dir)"
        if access.generated
        else f"nats.password, with nats.inbox_prefix {access.plugin.inbox_prefix}"
    )
    return (
        "bots and plugins connect without credentials: they may send rosey.command.* and "
        "rosey.llm.* requests and read rosey.event.llm.*; the event log and the views need "
        f"user {access.plugin.user} ({kept})"
    )


async def serve(
    config: Config, nats_url: str | None, data_dir: pathlib.Path, nats_port: int
) -> int:
    """Run until SIGINT/SIGTERM; start an embedded nats-server when no URL is configured."""
    if not config.enabled:
        log_kv(logger, "plugin_disabled", reason="config enabled=false")
        return 0
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    url = nats_url or config.nats.url
    embedded: EmbeddedNatsServer | None = None
    access: EmbeddedAccess | None = None
    async with contextlib.AsyncExitStack() as stack:
        if url is None:
            access = await asyncio.to_thread(prepare_embedded_access, config, data_dir)
            embedded = EmbeddedNatsServer(
                data_dir, port=nats_port, extra_arguments=("-c", str(access.server_config))
            )
            url = await embedded.start()
            stack.push_async_callback(embedded.stop)
            await asyncio.to_thread(record_url, data_dir, access, url)
            config = dataclasses.replace(config, nats=access.plugin)
            log_kv(logger, "embedded_nats_started", url=url, data_dir=str(data_dir))
        try:
            nc = await connect(config.nats, url)
        except (OSError, nats.errors.Error) as exc:
            secrets = connection_secrets(config.nats, url)
            print(
                f"llm-es: cannot connect to NATS at {redact_url(url or DEFAULT_LOCAL_URL)}:"
                f" {scrub_secrets(str(exc), secrets)}",
                file=sys.stderr,
            )
            return 1
        stack.push_async_callback(nc.drain)
        # One embedded server means one instance: a stable name lets a restart
        # close its own unfinished turns at once.
        plugin = Plugin(config, nc, instance_id="embedded" if embedded is not None else None)
        await plugin.start()
        stack.push_async_callback(plugin.stop)
        shown = redact_url(url)
        print(f"llm-es ready: send !chat commands on NATS at {shown}", file=sys.stderr, flush=True)
        if access is not None:
            print(how_clients_connect(access, data_dir), file=sys.stderr, flush=True)
        await stop.wait()
        log_kv(logger, "shutting_down")
    return 0
