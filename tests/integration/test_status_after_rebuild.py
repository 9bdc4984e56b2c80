"""`llm-es status` follows the blue/green pointer after `llm-replay rebuild`."""

from __future__ import annotations

from nats.aio.client import Client as NATS

from llm_es.app import Plugin
from llm_es.embedded import EmbeddedNatsServer
from tests.support.cli import console_script, run_script
from tests.support.harness import command


async def test_status_reports_the_live_bucket_after_a_rebuild(
    plugin: Plugin, client: NATS, nats_server: EmbeddedNatsServer
) -> None:
    """After a rebuild switches buckets, status describes the new live bucket, not llm_data."""
    assert (await command(client, "hello"))["success"]
    rebuilt = await run_script(
        console_script("llm-replay"), "rebuild", "--nats-url", nats_server.url
    )
    assert rebuilt.returncode == 0, rebuilt.stderr
    status = await run_script(
        console_script("llm-es"), "status", "--nats-url", nats_server.url, "--json"
    )
    assert status.returncode == 0, status.stderr
    bucket = status.json()["views"]["bucket"]
    assert bucket.startswith("llm_data_")
