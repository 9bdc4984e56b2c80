"""`llm-es status` follows the blue/green pointer after `llm-replay rebuild`."""

from __future__ import annotations

import asyncio
import pathlib
import sys

import orjson
from nats.aio.client import Client as NATS

from llm_es.app import Plugin
from llm_es.embedded import EmbeddedNatsServer
from tests.support.harness import command

BIN = pathlib.Path(sys.executable).parent


async def run(*args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    async with asyncio.timeout(60):
        stdout, stderr = await process.communicate()
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


async def test_status_reports_the_live_bucket_after_a_rebuild(
    plugin: Plugin, client: NATS, nats_server: EmbeddedNatsServer
) -> None:
    """After a rebuild switches buckets, status describes the new live bucket, not llm_data."""
    assert (await command(client, "hello"))["success"]
    code, _, errors = await run(str(BIN / "llm-replay"), "rebuild", "--nats-url", nats_server.url)
    assert code == 0, errors
    code, output, errors = await run(
        str(BIN / "llm-es"), "status", "--nats-url", nats_server.url, "--json"
    )
    assert code == 0, errors
    report = orjson.loads(output)
    assert report["views"]["bucket"] != "llm_data"
    assert report["views"]["bucket"].startswith("llm_data_")
