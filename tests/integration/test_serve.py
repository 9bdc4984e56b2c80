"""`llm-es serve` as operators run it: embedded nats-server, signals, data across restarts."""

from __future__ import annotations

import asyncio
import pathlib
import signal

import nats
import orjson
import pytest

from llm_es.embedded import EmbeddedNatsServer, pick_free_port
from tests.support.cli import console_script, hermetic_env
from tests.support.fake_llm import FakeLLMServer
from tests.support.harness import command, log_events, operator_client, wait_until

LLM_ES = console_script("llm-es")


async def start_serve(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        LLM_ES,
        "serve",
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env=hermetic_env(),
    )


async def stop_serve(process: asyncio.subprocess.Process, sig: int | None = signal.SIGTERM) -> str:
    """Signal the process (unless sig is None), wait (bounded) and return its stderr."""
    if process.returncode is None and sig is not None:
        process.send_signal(sig)
    try:
        async with asyncio.timeout(30):
            _, stderr = await process.communicate()
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    return stderr.decode()


async def port_open(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    writer.close()
    await writer.wait_closed()
    return True


async def chat_when_ready(url: str, args: str) -> dict[str, object]:
    port = int(url.rsplit(":", 1)[1])
    await wait_until(lambda: port_open(port), within=30, interval=0.1)
    client = await nats.connect(url, max_reconnect_attempts=3)
    try:

        async def ready() -> bool:
            try:
                return bool((await command(client, "help"))["success"])
            except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
                return False

        await wait_until(ready, within=30, interval=0.2)
        return await command(client, args)
    finally:
        await client.close()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_serve_runs_embedded_nats_and_keeps_data_across_restarts(
    tmp_path: pathlib.Path, fake_llm: FakeLLMServer, sig: int
) -> None:
    """No NATS URL: serve starts nats-server on its data dir, stops it on a signal, and the
    next start finds the same log and views (the second turn sees the first)."""
    config = tmp_path / "config.json"
    config.write_bytes(
        orjson.dumps(
            {"providers": {"ollama": {"base_url": fake_llm.base_url}}, "http": {"listen": None}}
        )
    )
    port = pick_free_port("127.0.0.1")
    url = f"nats://127.0.0.1:{port}"
    args = ("--config", str(config), "--data-dir", str(tmp_path / "data"), "--nats-port", str(port))

    first = await start_serve(*args)
    try:
        answer = await chat_when_ready(url, "My name is Alice")
        assert answer["success"] is True
    finally:
        stderr = await stop_serve(first, sig)
    assert first.returncode == 0, stderr
    assert "nats_server_stopped" in stderr
    assert (tmp_path / "data" / "jetstream").is_dir()
    assert not await port_open(port), "the embedded nats-server must stop with serve"

    second = await start_serve(*args)
    try:
        answer = await chat_when_ready(url, "What is my name?")
        assert answer["success"] is True
        client = await operator_client(tmp_path / "data")
        try:
            kinds = [e.TYPE for _, e in await log_events(client)]
        finally:
            await client.close()
    finally:
        stderr = await stop_serve(second)
    assert second.returncode == 0, stderr
    assert kinds.count("TurnCompleted") == 2
    sent = fake_llm.chat_requests[-1].body
    assert sent is not None
    assert "alice: My name is Alice" in [m["content"] for m in sent["messages"]]


async def test_serve_refuses_a_bad_config_naming_the_key(tmp_path: pathlib.Path) -> None:
    """An invalid config stops serve before anything starts: exit 2, the key named."""
    config = tmp_path / "config.json"
    config.write_text('{"rate_limits": {"requests_per_minute": "ten"}}')
    process = await start_serve("--config", str(config), "--data-dir", str(tmp_path / "d"))
    stderr = await stop_serve(process, sig=None)
    assert process.returncode == 2
    assert "rate_limits.requests_per_minute" in stderr
    assert not (tmp_path / "d").exists()


async def test_serve_reports_an_unreachable_nats_url(tmp_path: pathlib.Path) -> None:
    """A NATS URL nobody answers on: a clear message and exit 1 within seconds."""
    port = pick_free_port("127.0.0.1")
    process = await start_serve("--nats-url", f"nats://127.0.0.1:{port}")
    stderr = await stop_serve(process, sig=None)
    assert process.returncode == 1
    assert f"cannot connect to NATS at nats://127.0.0.1:{port}" in stderr


async def test_serve_never_prints_a_password_in_the_nats_url(
    tmp_path: pathlib.Path, nats_server: EmbeddedNatsServer, fake_llm: FakeLLMServer
) -> None:
    """The ready line and the unreachable-server message show the URL with `***` for the
    password (the server here has no auth, so it accepts any)."""
    port = nats_server.url.rsplit(":", 1)[1]
    url = f"nats://alice:hunter2-pw@127.0.0.1:{port}"
    config = tmp_path / "config.json"
    config.write_text(
        orjson.dumps({"providers": {"ollama": {"base_url": fake_llm.base_url}}}).decode()
    )
    process = await start_serve("--config", str(config), "--nats-url", url)
    assert process.stderr is not None
    async with asyncio.timeout(30):
        while b"llm-es ready" not in (line := await process.stderr.readline()):
            assert line, "serve ended before it was ready"
    assert line.decode().strip().endswith(f"at nats://alice:***@127.0.0.1:{port}")
    stderr = await stop_serve(process)
    assert "hunter2" not in stderr

    dead = pick_free_port("127.0.0.1")
    process = await start_serve("--nats-url", f"nats://bob:hunter2-pw@127.0.0.1:{dead}")
    stderr = await stop_serve(process, sig=None)
    assert process.returncode == 1
    assert f"cannot connect to NATS at nats://bob:***@127.0.0.1:{dead}" in stderr
    assert "hunter2" not in stderr
