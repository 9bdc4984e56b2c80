"""A server that refuses the client: the user sees why, promptly, and no secret."""

from __future__ import annotations

import pathlib
from collections.abc import AsyncIterator

import pytest

from llm_es.embedded import EmbeddedNatsServer
from tests.support.cli import console_script, run_script

PASSWORD = "s3cret-pw-0123"
WRONG = "wrong-pw-4567"


@pytest.fixture
async def auth_server(tmp_path: pathlib.Path) -> AsyncIterator[EmbeddedNatsServer]:
    server = EmbeddedNatsServer(
        tmp_path / "nats", port=0, extra_arguments=("--user", "llmes", "--pass", PASSWORD)
    )
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.mark.parametrize(
    ("script", "args"),
    [
        ("llm-es", ("status",)),
        ("llm-es", ("serve",)),
        ("llm-replay", ("audit", "--all")),
        ("llm-replay", ("verify",)),
    ],
)
async def test_a_wrong_password_is_an_authorization_violation(
    auth_server: EmbeddedNatsServer, script: str, args: tuple[str, ...]
) -> None:
    """Not "no servers available" after 20 s: the user named, neither password printed."""
    url = f"nats://bob:{WRONG}@127.0.0.1:{auth_server.port}"
    result = await run_script(console_script(script), *args, "--nats-url", url, within=15.0)
    assert result.returncode != 0
    assert (
        f"cannot connect to NATS at nats://bob:***@127.0.0.1:{auth_server.port}" in result.stderr
        or f"cannot connect to NATS at nats://127.0.0.1:{auth_server.port}" in result.stderr
    ), result.stderr
    assert "authorization violation for user bob" in result.stderr, result.stderr
    assert WRONG not in result.stderr + result.stdout
    assert PASSWORD not in result.stderr + result.stdout
