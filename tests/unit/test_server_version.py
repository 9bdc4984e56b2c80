"""The nats-server version gate: 2.12 or newer with JetStream, or a clear refusal."""

from __future__ import annotations

import pytest

from llm_es.errors import ServerVersionError
from llm_es.store.stream_settings import check_server_version


@pytest.mark.parametrize("version", ["2.12.0", "2.15.1", "v2.12.3", "3.0.0", "2.20.0-beta"])
def test_current_servers_are_accepted(version: str) -> None:
    """2.12 and newer (any patch, a leading v, pre-release tags) pass."""
    check_server_version(version, jetstream=True)


@pytest.mark.parametrize("version", ["2.11.9", "2.10.0", "1.4.1", "v2.9.22"])
def test_older_servers_are_refused_with_the_reason(version: str) -> None:
    """Anything older than 2.12 is refused, naming the version and what is missing."""
    with pytest.raises(ServerVersionError, match=r"too old: llm-es needs 2\.12 or newer"):
        check_server_version(version, jetstream=True)


def test_jetstream_disabled_is_refused() -> None:
    """A server without JetStream cannot hold the log."""
    with pytest.raises(ServerVersionError, match="JetStream disabled"):
        check_server_version("2.15.1", jetstream=False)


def test_unreadable_version_is_refused() -> None:
    """A version string we cannot parse is an error, not a pass."""
    with pytest.raises(ServerVersionError, match="cannot read"):
        check_server_version("banana", jetstream=True)
