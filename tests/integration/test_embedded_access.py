"""`llm-es serve`'s embedded nats-server has access control by default.

Anonymous clients (the bot, plugins, `llm-es chat`) keep chatting but cannot touch the
log; the plugin's own user has a password generated on first start, kept 0600 in the
data dir, reused on restart, and read from there by `llm-es status` and `llm-replay`.
"""

from __future__ import annotations

import asyncio
import pathlib
import stat
from typing import Any

import nats
import nats.errors
import orjson
import pytest
from nats.aio.client import Client as NATS

from llm_es.access import PLUGIN_INBOX
from llm_es.embedded import pick_free_port
from llm_es.local_access import ACCESS_FILE
from llm_es.store.log import STREAM_NAME
from tests.integration.test_serve import chat_when_ready, start_serve, stop_serve
from tests.support.cli import console_script, run_script
from tests.support.fake_llm import FakeLLMServer
from tests.support.harness import command, operator_client, stored_access

pytestmark = pytest.mark.timeout(180)

DENIED_SECONDS = 1.0
QUIET_SECONDS = 0.5


def write_config(
    tmp_path: pathlib.Path, fake_llm: FakeLLMServer, name: str = "config", **nats_section: Any
) -> str:
    path = tmp_path / f"{name}.json"
    body: dict[str, Any] = {
        "providers": {"ollama": {"base_url": fake_llm.base_url}},
        "http": {"listen": None},
    }
    if nats_section:
        body["nats"] = nats_section
    path.write_bytes(orjson.dumps(body))
    path.chmod(0o600)
    return str(path)


async def read_ready_lines(process: asyncio.subprocess.Process) -> list[str]:
    """serve's stderr up to and including the line after "llm-es ready"."""
    assert process.stderr is not None
    lines: list[str] = []
    async with asyncio.timeout(60):
        while not any("llm-es ready" in line for line in lines[:-1]):
            line = (await process.stderr.readline()).decode()
            assert line, "serve ended before it was ready:\n" + "".join(lines)
            lines.append(line)
    return lines


async def denied(nc: NATS, subject: str) -> bool:
    try:
        await nc.request(subject, b"", timeout=DENIED_SECONDS)
    except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
        return True
    return False


async def test_anonymous_clients_chat_but_cannot_read_or_delete_the_log(
    tmp_path: pathlib.Path, fake_llm: FakeLLMServer
) -> None:
    """First start: credentials generated (0600), serve says how bots connect without
    printing the password; an anonymous client chats, but `$JS.API.STREAM.DELETE` and
    reading `llm.ev.>` or KV get nothing; status and llm-replay work from the data dir;
    a restart reuses the same password."""
    data_dir = tmp_path / "data"
    port = pick_free_port("127.0.0.1")
    url = f"nats://127.0.0.1:{port}"
    args = ("--config", write_config(tmp_path, fake_llm), "--data-dir", str(data_dir))
    serve = await start_serve(*args, "--nats-port", str(port))
    try:
        ready = "".join(await read_ready_lines(serve))
        access = stored_access(data_dir)
        mode = stat.S_IMODE((data_dir / ACCESS_FILE).stat().st_mode)
        assert mode == 0o600, oct(mode)
        assert access["user"] == "llmes"
        assert access["url"] == url
        assert access["inbox_prefix"] == PLUGIN_INBOX
        assert access["password"] not in ready
        assert "bots and plugins connect without credentials" in ready
        assert f"user llmes (its password is in {data_dir / ACCESS_FILE}" in ready

        anonymous = await nats.connect(url, max_reconnect_attempts=2)
        try:
            seen: list[str] = []

            async def on_log(msg: Any) -> None:
                seen.append(msg.subject)

            await anonymous.subscribe("llm.ev.>", cb=on_log)
            assert (await chat_when_ready(url, "Hello there"))["success"] is True
            assert (await command(anonymous, "Again"))["success"] is True
            await asyncio.sleep(QUIET_SECONDS)
            assert seen == []
            assert await denied(anonymous, f"$JS.API.STREAM.DELETE.{STREAM_NAME}")
            assert await denied(anonymous, f"$JS.API.STREAM.INFO.{STREAM_NAME}")
            assert await denied(anonymous, "$JS.API.DIRECT.GET.KV_llm_data.$KV.llm_data.x")
        finally:
            await anonymous.close()

        operator = await operator_client(data_dir)
        try:
            info = await operator.jetstream().stream_info(STREAM_NAME)
            assert info.state.messages > 0
        finally:
            await operator.close()
        status = await run_script(
            console_script("llm-es"), "status", "--json", "--data-dir", str(data_dir)
        )
        assert status.returncode == 0, status.stderr
        assert status.json()["stream"]["messages"] == info.state.messages
        assert status.json()["instance"]["answered"] is True
        anonymous_status = await run_script(
            console_script("llm-es"), "status", "--json", "--nats-url", url
        )
        assert anonymous_status.returncode == 0, anonymous_status.stderr
        assert anonymous_status.json()["stream"]["exists"] is None
        assert anonymous_status.json()["views"]["exists"] is None
        assert anonymous_status.json()["instance"]["answered"] is True
        verify = await run_script(
            console_script("llm-replay"), "verify", "--no-progress", "--data-dir", str(data_dir)
        )
        assert verify.returncode == 0, verify.stdout + verify.stderr
    finally:
        stderr = await stop_serve(serve)
    assert serve.returncode == 0, stderr
    assert access["password"] not in stderr

    second = await start_serve(*args, "--nats-port", "0")
    try:
        await read_ready_lines(second)
        again = stored_access(data_dir)
        assert again["password"] == access["password"]
        assert again["url"] != url
        assert (await chat_when_ready(again["url"], "Still there?"))["success"] is True
    finally:
        await stop_serve(second)


async def test_configured_user_and_password_apply_to_the_embedded_server(
    tmp_path: pathlib.Path, fake_llm: FakeLLMServer
) -> None:
    """nats.user/password become the plugin's user (a password with quotes, spaces and `#`
    survives the server's config syntax); nothing is stored; anonymous clients still chat;
    status connects as that user with the private inbox serve names."""
    data_dir = tmp_path / "data"
    port = pick_free_port("127.0.0.1")
    url = f"nats://127.0.0.1:{port}"
    password = 'p "w" #1 \\ x'
    config = write_config(tmp_path, fake_llm, user="ops", password=password)
    serve = await start_serve(
        "--config", config, "--data-dir", str(data_dir), "--nats-port", str(port)
    )
    try:
        ready = "".join(await read_ready_lines(serve))
        assert "need user ops (nats.password, with nats.inbox_prefix _INBOX_llmes)" in ready
        assert password not in ready
        assert (await chat_when_ready(url, "Hello"))["success"] is True
        assert not (data_dir / ACCESS_FILE).exists()
        as_ops = write_config(
            tmp_path, fake_llm, "ops", user="ops", password=password, inbox_prefix="_INBOX_llmes"
        )
        status = await run_script(
            console_script("llm-es"), "status", "--json", "--config", as_ops, "--nats-url", url
        )
        assert status.returncode == 0, status.stderr
        assert status.json()["stream"]["exists"] is True
    finally:
        await stop_serve(serve)


async def test_a_configured_token_is_required_from_every_client(
    tmp_path: pathlib.Path, fake_llm: FakeLLMServer
) -> None:
    """With nats.token the embedded server admits only clients that present it."""
    port = pick_free_port("127.0.0.1")
    url = f"nats://127.0.0.1:{port}"
    config = write_config(tmp_path, fake_llm, token="tok-0123456789")
    serve = await start_serve(
        "--config", config, "--data-dir", str(tmp_path / "data"), "--nats-port", str(port)
    )
    try:
        ready = "".join(await read_ready_lines(serve))
        assert "clients connect with the token of nats.token" in ready
        assert (await chat_when_ready(f"nats://tok-0123456789@127.0.0.1:{port}", "Hi"))[
            "success"
        ] is True
        with pytest.raises(nats.errors.Error):
            await nats.connect(url, max_reconnect_attempts=1, connect_timeout=2)
    finally:
        await stop_serve(serve)
