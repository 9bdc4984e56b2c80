"""The options `llm-es` and `llm-replay` share: the config file, the NATS URL, the data dir
and the log level.

Both commands take them before or after the subcommand, and read them the same
way; only their help texts say what differs (the default URL, the default level).
"""

from __future__ import annotations

import argparse
import logging
import os
import pathlib
from dataclasses import dataclass

from llm_es.logs import configure_logging

NATS_URL_HELP = "NATS server URL(s); default: $LLM_ES_NATS_URL, the config's nats.url, else "
DEFAULT_DATA_DIR = "llm-es-data"
DATA_DIR_HELP = (
    "the embedded nats-server's data and credentials (default ./llm-es-data or $LLM_ES_DATA_DIR);"
    " with no server named, the tools connect with the credentials kept there"
)


def data_dir(value: pathlib.Path | None) -> pathlib.Path:
    """`--data-dir`, else `$LLM_ES_DATA_DIR`, else `./llm-es-data`."""
    return value or pathlib.Path(os.environ.get("LLM_ES_DATA_DIR") or DEFAULT_DATA_DIR)


@dataclass(frozen=True, slots=True)
class CommonOptions:
    """`--config`, `--nats-url`, `--data-dir` and `--log-level`, with one command's help texts."""

    config_help: str
    nats_url_fallback: str
    """The URL used when neither `$LLM_ES_NATS_URL` nor the config names one."""
    log_level_help: str

    def add_to(self, parser: argparse.ArgumentParser, *, top: bool = False) -> None:
        """Add them to the command's parser (`top`) or to one subcommand's."""
        # Accepted before or after the subcommand; the subcommand's copies must
        # not overwrite a value given before it, hence SUPPRESS there.
        default = None if top else argparse.SUPPRESS
        parser.add_argument("--config", type=pathlib.Path, default=default, help=self.config_help)
        parser.add_argument(
            "--nats-url", default=default, help=NATS_URL_HELP + self.nats_url_fallback
        )
        parser.add_argument("--data-dir", type=pathlib.Path, default=default, help=DATA_DIR_HELP)
        parser.add_argument(
            "--log-level",
            default=os.environ.get("LLM_ES_LOG_LEVEL") if top else argparse.SUPPRESS,
            help=self.log_level_help,
        )


def start_logging(log_level: str | None, *, default: str, closes_own_connection: bool) -> None:
    """Log at `--log-level` (else `default`)."""
    level = (log_level or default).upper()
    configure_logging(level)
    if closes_own_connection and level not in ("DEBUG", "INFO"):
        # A command that closes its own connection at the end: that "disconnected"
        # is no news to the person at the terminal.
        logging.getLogger("llm_es.nats").setLevel(logging.ERROR)
