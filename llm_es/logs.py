"""Structured log lines: one `event key=value ...` line per thing that happened."""

from __future__ import annotations

import atexit
import logging
import logging.handlers
import queue
import re
import sys
import time

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


LINE_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"

QUIET_LIBRARY_LOGGERS = ("httpx", "httpcore")
"""Libraries that log every HTTP request at INFO: provider calls are logged by the
plugin (`turn_completed`, `turn_failed`), and their lines would carry full URLs."""

_listener: logging.handlers.QueueListener | None = None


def configure_logging(level: str = "INFO") -> None:
    """Plain one-line records on stderr with a UTC timestamp, written by a thread.

    Handlers only put records on a queue; a `QueueListener` thread writes them,
    so a slow or blocked stderr never stalls the event loop. The queue is
    drained when the process exits (`stop_logging`, also run at exit).
    """
    global _listener
    stop_logging()
    writer = logging.StreamHandler(sys.stderr)
    formatter = logging.Formatter(LINE_FORMAT)
    formatter.converter = time.gmtime
    writer.setFormatter(formatter)
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.addHandler(logging.handlers.QueueHandler(records))
    root.setLevel(level.upper())
    for name in QUIET_LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    _listener = logging.handlers.QueueListener(records, writer)
    _listener.start()
    atexit.register(stop_logging)


def stop_logging() -> None:
    """Write every queued record and stop the writer thread (idempotent)."""
    global _listener
    listener, _listener = _listener, None
    if listener is not None:
        listener.stop()
