"""Privacy and abuse caps through NATS: secrets scrubbed from provider errors, caps that
refuse before anything is appended, names that could not fit the server's control line."""

from __future__ import annotations

import orjson
from nats.aio.client import Client as NATS

from llm_es.app import Plugin
from llm_es.domain.events import TurnFailed
from tests.support.fake_llm import FakeLLMServer
from tests.support.harness import command, log_events

KEY_ECHO = "Invalid key sk-or-...55aa; header was Bearer sk-or-v1-abcdef0123456789 (api_key=zz99)"


async def test_a_provider_error_echoing_a_key_is_scrubbed_everywhere(
    plugin: Plugin, client: NATS, fake_llm: FakeLLMServer
) -> None:
    """A provider's error text that echoes a key fragment or a bearer token reaches neither the
    reply nor `TurnFailed`: the key-shaped parts are `***`, the rest of the reason stays."""
    fake_llm.raw_answer = orjson.dumps({"error": KEY_ECHO})
    answer = await command(client, "hello")
    expected = "Ollama error: Invalid key ***; header was Bearer *** (api_key=***)"
    assert answer == {"success": False, "error": expected}
    failed = [e for _, e in await log_events(client) if isinstance(e, TurnFailed)]
    assert [e.error for e in failed] == [expected]
    for text in ("55aa", "abcdef0123456789", "zz99"):
        assert text not in str(answer)
        assert text not in repr(failed)
