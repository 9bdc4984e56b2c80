"""Crypto-shredding, checked from the outside: after `!chat forget` (a fact) or
`llm-replay erase --user` (a user's words), the text is in no byte the server keeps (any
stream, any KV revision), and every figure of the log stays."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from nats.aio.client import Client as NATS
from nats.js.errors import NoKeysError, NotFoundError

from llm_es.app import Plugin
from llm_es.domain.events import ContextSummarized, TurnAdmitted, UserErased
from llm_es.domain.personal_data import memory_key_name
from llm_es.embedded import EmbeddedNatsServer
from llm_es.store.keyring import KEYS_BUCKET
from tests.integration.conftest import PluginStarter
from tests.support.cli import console_script, run_script
from tests.support.fake_llm import FakeLLMServer
from tests.support.harness import command, log_events, wait_persisted, wait_until

pytestmark = pytest.mark.timeout(120)
LLM_REPLAY = console_script("llm-replay")
FACT = "Zanzibar-7 door code is 4711"
SECRET_WORD = b"Zanzibar-7"


async def every_stored_byte(client: NATS) -> list[bytes]:
    """Every message body and header block of every stream, read one sequence at a time
    (KV buckets are streams too, so every revision a bucket keeps is in here)."""
    js = client.jetstream()
    found: list[bytes] = []
    for info in await js.streams_info():
        name = info.config.name
        assert name is not None
        for seq in range(max(info.state.first_seq, 1), info.state.last_seq + 1):
            try:
                msg = await js.get_msg(name, seq)
            except NotFoundError:
                continue  # removed: a KV revision replaced or purged
            found.append(msg.data or b"")
            found.append(orjson.dumps(msg.headers or {}))
    return found


async def every_kv_revision(client: NATS) -> list[bytes]:
    """Every value `kv.history` returns, for every key of every bucket."""
    js = client.jetstream()
    values: list[bytes] = []
    for info in await js.streams_info():
        name = info.config.name or ""
        if not name.startswith("KV_"):
            continue
        kv = await js.key_value(name[3:])
        try:
            keys = await kv.keys()
        except Exception:  # nats-py raises NoKeysError on an empty bucket
            continue
        for key in keys:
            try:
                history = await kv.history(key)
            except NoKeysError:  # deleted since `keys()` listed it (a lease, a view)
                continue
            values.extend(entry.value or b"" for entry in history)
    return values


async def replay_json(url: str, *args: str) -> Any:
    result = await run_script(LLM_REPLAY, "--nats-url", url, *args, within=60.0)
    assert result.returncode == 0, result.stderr
    return orjson.loads(result.stdout)


async def test_forget_shreds_the_fact_everywhere_and_keeps_every_figure(
    plugin: Plugin, client: NATS, fake_llm: FakeLLMServer, nats_server: EmbeddedNatsServer
) -> None:
    """A remembered fact is stored sealed from the start (the stream never holds it in the
    clear); `forget` purges its key, after which neither the key nor the text is in any
    stream byte or KV revision, the next prompt no longer carries it, `verify` finds no
    difference and `audit`'s counts and tokens are what they were."""
    remembered = await command(client, f"remember {FACT}")
    memory_id = remembered["result"]["memory_id"]
    assert (await command(client, "What is the door code?"))["success"]
    assert FACT in orjson.dumps(fake_llm.chat_requests[-1].body).decode()
    keys = await client.jetstream().key_value(KEYS_BUCKET)
    key = (await keys.get(memory_key_name("lobby", memory_id))).value
    assert key
    await wait_persisted(client)
    stored = await every_stored_byte(client)
    assert not [b for b in stored if SECRET_WORD in b]  # sealed, even before the forget
    assert [b for b in stored if key in b]  # the key itself sits in its bucket
    audit_before = await replay_json(nats_server.url, "audit", "--all", "--format", "json")

    forgot = await command(client, f"forget {memory_id}")
    assert forgot == {
        "success": True,
        "result": {"message": f"Forgot memory: {memory_id}", "memory_id": memory_id},
    }
    await wait_persisted(client)
    stored = await every_stored_byte(client)
    assert not [b for b in stored if SECRET_WORD in b or key in b]
    assert not [v for v in await every_kv_revision(client) if SECRET_WORD in v or key in v]
    verified = await replay_json(nats_server.url, "verify", "--json", "--no-progress")
    assert verified["ok"] is True, verified
    audit_after = await replay_json(nats_server.url, "audit", "--all", "--format", "json")
    assert audit_after["totals"] == audit_before["totals"]
    assert audit_after["totals"]["tokens"] > 0

    assert (await command(client, "What is the door code?"))["success"]
    assert SECRET_WORD.decode() not in orjson.dumps(fake_llm.chat_requests[-1].body).decode()


ALICE_SECRET = "Quokka-99"
SUMMARY = "Alice keeps the Quokka-99 locker; Bob likes chess."


def summary_or_echo(messages: list[dict[str, Any]]) -> str:
    """The fake model: a summary (naming Alice's secret) when asked for one, else a nod."""
    return SUMMARY if "running summary" in messages[0]["content"] else "Noted."


async def test_erase_user_shreds_their_words_keeps_others_and_every_figure(
    start: PluginStarter, client: NATS, fake_llm: FakeLLMServer, nats_server: EmbeddedNatsServer
) -> None:
    """`llm-replay erase --user alice` destroys alice's key, her facts' keys and the summary
    key of the channel she spoke in, then appends MemoryForgotten for her live fact and
    UserErased: her words are in no stream byte or KV revision, bob's still read, the next
    prompt carries none of hers, `audit`'s figures stay, `verify` finds no difference, and
    chatting goes on (alice too, under a fresh key)."""
    fake_llm.reply = summary_or_echo
    plugin = await start(max_context_messages=2, summarize_after_messages=4)
    assert (await command(client, f"My locker is {ALICE_SECRET}"))["success"]
    assert (await command(client, "I like chess", user="bob"))["success"]
    assert (await command(client, f"remember alice locker {ALICE_SECRET}"))["success"]
    assert (await command(client, "Nice weather", user="bob"))["success"]

    async def summarized() -> bool:
        return any(isinstance(e, ContextSummarized) for _, e in await log_events(client))

    await wait_until(summarized, within=10)
    await wait_persisted(client)
    assert not [b for b in await every_stored_byte(client) if ALICE_SECRET.encode() in b]
    audit_before = await replay_json(nats_server.url, "audit", "--all", "--format", "json")

    erased = await replay_json(nats_server.url, "erase", "--user", "alice", "--json")
    assert {k: erased[k] for k in ("user", "channels", "facts", "keys_destroyed")} == {
        "user": "alice",
        "channels": ["lobby"],
        "facts": 1,
        "keys_destroyed": 3,
    }
    events = [e for _, e in await log_events(client)]
    assert [e.TYPE for e in events[-2:]] == ["MemoryForgotten", "UserErased"]
    assert events[-1] == UserErased(
        id=events[-1].id, at=events[-1].at, user="alice", channels=("lobby",), memories=1
    )
    said = {
        (e.user, e.message) for e in events if isinstance(e, TurnAdmitted) and e.purpose == "chat"
    }
    assert said == {
        ("alice", "[erased]"),
        ("bob", "I like chess"),
        ("bob", "Nice weather"),
    }
    summary = next(e for e in events if isinstance(e, ContextSummarized))
    assert summary.summary == "[erased]"

    await wait_persisted(client)
    assert plugin.views is not None
    await wait_until(lambda: plugin.views is not None and plugin.views.position >= erased["seq"])
    stored = await every_stored_byte(client)
    assert not [b for b in stored if ALICE_SECRET.encode() in b]
    assert not [v for v in await every_kv_revision(client) if ALICE_SECRET.encode() in v]
    verified = await replay_json(nats_server.url, "verify", "--json", "--no-progress")
    assert verified["ok"] is True, verified
    audit_after = await replay_json(nats_server.url, "audit", "--all", "--format", "json")
    assert audit_after["totals"] == audit_before["totals"]
    assert audit_after["rows"] == audit_before["rows"]

    assert (await command(client, "Where is my locker?", user="bob"))["success"]
    prompt = orjson.dumps(fake_llm.chat_requests[-1].body).decode()
    assert "Quokka" not in prompt
    assert "[erased]" not in prompt
    assert (await command(client, "I am back", user="alice"))["success"]
    back = [e for _, e in await log_events(client) if isinstance(e, TurnAdmitted)][-1]
    assert (back.user, back.message) == ("alice", "I am back")
