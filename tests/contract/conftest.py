"""Fixtures: one nats-server for the contract suites, and a clean server after every test.

The library's suites are unittest classes: they find the server through the
NATS_URL environment variable, which the autouse fixture sets for each test.
After each test every stream is deleted, so the next one starts from an empty
server (notification ids from 1) without paying for a new server process.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from tests.contract.support import ServerThread


@pytest.fixture(scope="session")
def jetstream_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    server = ServerThread(tmp_path_factory.mktemp("contract-nats"))
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(autouse=True)
def clean_jetstream(
    jetstream_server: ServerThread, monkeypatch: pytest.MonkeyPatch
) -> Iterator[ServerThread]:
    monkeypatch.setenv("NATS_URL", jetstream_server.url)
    yield jetstream_server
    # Applications the suites never close hold connections until collected.
    gc.collect()
    jetstream_server.delete_all_streams()
