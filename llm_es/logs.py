"""Structured log lines: one `event key=value ...` line per thing that happened."""

from __future__ import annotations

import logging
import re

_PLAIN = re.compile(r"[^\s=\"]+")


def _format_value(value: object) -> str:
    text = str(value)
    if _PLAIN.fullmatch(text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def log_kv(logger: logging.Logger, event: str, level: int = logging.INFO, **fields: object) -> None:
    """Log `event k=v ...`; callers pass no secrets and no full prompts."""
    if logger.isEnabledFor(level):
        parts = " ".join(f"{k}={_format_value(v)}" for k, v in fields.items())
        logger.log(level, "%s %s", event, parts)


def configure_logging(level: str = "INFO") -> None:
    """Plain one-line records on stderr with a UTC timestamp."""
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    logging.Formatter.converter = __import__("time").gmtime
