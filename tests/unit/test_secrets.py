"""Tests of what keeps secrets out of texts: `scrub_secrets`, `url_passwords`, and the warning
for a config file holding secrets that others may read."""

from __future__ import annotations

import logging
import pathlib

import orjson
import pytest

from llm_es.config import load_config_sync, scrub_secrets, url_passwords

KEY = "sk-or-v1-0123456789abcdef0123456789abcdef0123456789abcdef012355aa"


@pytest.mark.parametrize(
    ("text", "scrubbed"),
    [
        ("Invalid key sk-or-...55aa for user", "Invalid key *** for user"),
        ("Incorrect API key provided: sk-proj-****abcd", "Incorrect API key provided: ***"),
        ("Authorization: Bearer abc.def-ghi was refused", "Authorization: Bearer *** was refused"),
        ("key ending 6789abcdef012355aa is revoked", "key ending *** is revoked"),
        (f"invalid key {KEY}", "invalid key ***"),
        ("bad request: api_key=xyz123&model=x", "bad request: api_key=***&model=x"),
        ('{"password": "hunter2"}', '{"password": "***"}'),
        ("a task-force of desk-top users", "a task-force of desk-top users"),
        ("Token limit reached for max_tokens=4096", "Token limit reached for max_tokens=4096"),
        ("model 'llama3' not found", "model 'llama3' not found"),
    ],
)
def test_scrub_secrets_removes_keys_fragments_and_tokens(text: str, scrubbed: str) -> None:
    """Known keys whole or in pieces of six or more, key-shaped words, bearer tokens and
    `name=value` credentials become `***`; ordinary text is left alone."""
    assert scrub_secrets(text, (KEY,)) == scrubbed


def test_url_passwords_finds_passwords_and_tokens_of_every_server() -> None:
    """A password after `user:`, a lone token before `@`, across comma-separated servers."""
    url = "nats://alice:pw1@a:4222,nats://TOKEN9@b:4222,nats://c:4222"
    assert url_passwords(url) == ["pw1", "TOKEN9"]
    assert url_passwords("nats://127.0.0.1:4222") == []


def write_config(path: pathlib.Path, body: object, mode: int) -> pathlib.Path:
    path.write_bytes(orjson.dumps(body))
    path.chmod(mode)
    return path


SECRET_BODIES = [
    {"providers": {"openai": {"api_key": "sk-test"}}},
    {"nats": {"url": "nats://alice:pw@127.0.0.1:4222"}},
    {"nats": {"token": "t0k"}},
]


@pytest.mark.parametrize("body", SECRET_BODIES)
def test_a_config_file_with_secrets_readable_by_others_warns_once(
    tmp_path: pathlib.Path, body: object, caplog: pytest.LogCaptureFixture
) -> None:
    """Mode 0644 on a file holding a key or password: one WARNING naming the file and the
    mode (never the secret), however often the file is loaded; the config still loads."""
    caplog.set_level(logging.WARNING, logger="llm_es.config")
    path = write_config(tmp_path / "config.json", body, 0o644)
    load_config_sync(path, env={})
    load_config_sync(path, env={})
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert warnings[0].startswith(f"config_file_readable_by_others path={path} mode=0644 ")
    assert "chmod 600" in warnings[0]
    for secret in ("sk-test", "pw@", "t0k"):
        assert secret not in warnings[0]


@pytest.mark.parametrize(
    ("body", "mode"),
    [(SECRET_BODIES[0], 0o600), (SECRET_BODIES[1], 0o400), ({"service": {}}, 0o644)],
)
def test_no_warning_for_a_private_file_or_one_without_secrets(
    tmp_path: pathlib.Path, body: object, mode: int, caplog: pytest.LogCaptureFixture
) -> None:
    """Only the owner may read it, or it holds no secret (keys from the environment)."""
    caplog.set_level(logging.WARNING, logger="llm_es.config")
    load_config_sync(
        write_config(tmp_path / "config.json", body, mode), env={"OPENAI_API_KEY": "sk-x"}
    )
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]
