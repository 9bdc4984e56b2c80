"""Log configuration of the console scripts: lines written by a thread, libraries quiet."""

from __future__ import annotations

import logging
import logging.handlers
import threading
from collections.abc import Iterator

import pytest

from llm_es.logs import QUIET_LIBRARY_LOGGERS, configure_logging, log_kv, stop_logging


@pytest.fixture
def restored_logging() -> Iterator[None]:
    """configure_logging changes the root logger: put pytest's handlers back afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    quiet_levels = {name: logging.getLogger(name).level for name in QUIET_LIBRARY_LOGGERS}
    try:
        yield
    finally:
        stop_logging()
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in handlers:
            root.addHandler(handler)
        root.setLevel(level)
        for name, quiet_level in quiet_levels.items():
            logging.getLogger(name).setLevel(quiet_level)


def test_records_are_written_by_a_thread_and_all_reach_stderr_by_exit(
    restored_logging: None, capfd: pytest.CaptureFixture[str]
) -> None:
    """The caller only queues a record (the root's one handler is a QueueHandler); the
    writer thread prints it as `time LEVEL logger event k=v`, and stop_logging drains
    every queued line."""
    before = set(threading.enumerate())
    configure_logging("INFO")
    root = logging.getLogger()
    assert [type(h) for h in root.handlers] == [logging.handlers.QueueHandler]
    assert set(threading.enumerate()) - before, "no writer thread started"
    for n in range(200):
        log_kv(logging.getLogger("llm_es.test"), "turn_completed", n=n, user="alice")
    stop_logging()
    lines = capfd.readouterr().err.splitlines()
    assert len(lines) == 200
    assert lines[0].split(" ", 2)[2] == "INFO llm_es.test turn_completed n=0 user=alice"
    assert lines[-1].endswith("turn_completed n=199 user=alice")


def test_http_libraries_log_no_per_request_lines(
    restored_logging: None, capfd: pytest.CaptureFixture[str]
) -> None:
    """httpx's INFO line per request (with the full URL) is not written; its warnings are."""
    configure_logging("INFO")
    logging.getLogger("httpx").info('HTTP Request: POST http://u:p@host/api/chat "200 OK"')
    logging.getLogger("httpx").warning("something went wrong")
    stop_logging()
    err = capfd.readouterr().err
    assert "HTTP Request" not in err
    assert "WARNING httpx something went wrong" in err
