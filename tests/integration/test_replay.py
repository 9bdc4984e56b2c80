"""`llm-replay` on a real log: rebuild, verify, state at a moment, audit, and old schemas.

A plugin runs on the test nats-server and builds a mixed history through NATS
(chats, a rejection, memories added, recalled and forgotten, a persona, a
reset, a summary, a service completion, a crash closed as abandoned). The
replay tools then read that log through their own connection, as an
operator's terminal would.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import orjson
import pytest
from nats.aio.client import Client as NATS
from nats.js.errors import BucketNotFoundError

from llm_es.app import Plugin
from llm_es.config import Config, RateLimitsConfig
from llm_es.domain.events import (
    ContextSummarized,
    Event,
    MemoryAdded,
    MemoryForgotten,
    TokensSpent,
    TurnAdmitted,
    TurnRejected,
)
from llm_es.domain.views import memory_key, usage_key
from llm_es.embedded import EmbeddedNatsServer
from llm_es.store.codec import UPCASTERS, encode_event
from llm_es.store.kv import read_bucket
from llm_es.store.log import EventStore
from projections.buckets import read_active_views
from projections.runner import ViewRunner
from replay import (
    EventLog,
    Moment,
    channel_state,
    run_audit,
    run_rebuild,
    run_verify,
    user_state,
)
from replay.fold import select_projections
from tests.integration.conftest import PluginStarter
from tests.support.fake_llm import FakeLLMServer
from tests.support.harness import (
    command,
    log_events,
    make_config,
    raw_request,
    start_plugin,
    stop_plugin,
    wait_until,
)

SUMMARY = "Sam talked about tea, cats and the moon."
pytestmark = pytest.mark.timeout(90)


def reply_for(messages: list[dict[str, Any]]) -> str:
    if "running summary" in messages[0]["content"]:
        return SUMMARY
    return "Hello from the fake model."


def history_config(fake_llm: FakeLLMServer) -> Config:
    """Small windows, so one short history has a rejection and a summary."""
    fake_llm.reply = reply_for
    return make_config(
        fake_llm.base_url,
        rate_limits=RateLimitsConfig(requests_per_minute=3),
        max_context_messages=2,
        summarize_after_messages=4,
    )


@pytest.fixture
async def replay_log(nats_server: EmbeddedNatsServer) -> AsyncIterator[EventLog]:
    """The replay tools' own connection, with the default reader (nats-py's public client)."""
    nc = NATS()
    await nc.connect(nats_server.url, max_reconnect_attempts=2)
    try:
        yield EventLog(nc)
    finally:
        await nc.close()


async def mixed_history(client: NATS) -> None:
    """Every kind of change: chats, a rejection, memories, persona, reset, summary, service."""
    assert (await command(client, "Hello there", channel="a"))["success"]
    assert (await command(client, "How are you?", channel="a"))["success"]
    await command(client, "persona technical", channel="a")
    fact = await command(client, "remember Alice likes Python", channel="a")
    await command(client, "remember Bob likes Rust", channel="a", user="bob")
    await command(client, "recall likes", channel="a")
    await command(client, f"forget {fact['result']['memory_id']}", channel="a")
    await command(client, "Other channel", channel="b", user="bob")
    await command(client, "reset", channel="b", user="bob")
    for text in ("I own a cat", "I like tea", "The moon is far"):
        assert (await command(client, text, channel="s", user="sam"))["success"]
    for number in range(4):
        await command(client, f"spam {number}", channel="c", user="carol")
    completion = await raw_request(
        client,
        "rosey.llm.complete",
        orjson.dumps({"messages": [{"role": "user", "content": "Say hi"}]}),
    )
    assert completion["success"], completion

    async def summarized() -> bool:
        return any(isinstance(e, ContextSummarized) for _, e in await log_events(client))

    await wait_until(summarized, within=15)


async def crash_mid_turn(nats_server: EmbeddedNatsServer, client: NATS, config: Config) -> Plugin:
    """A turn admitted by an instance that died: the next start closes it as abandoned."""
    store = EventStore(client, client.jetstream())
    await store.append(
        TurnAdmitted(
            turn_id="c" * 32,
            channel="a",
            user="dave",
            source="command",
            persona="default",
            provider="ollama",
            model="llama3.2",
            message="never answered",
            reserved_tokens=500,
            max_tokens=400,
        )
    )
    plugin, _ = await start_plugin(nats_server.url, config)
    return plugin


def runner(plugin: Plugin) -> ViewRunner:
    return cast(ViewRunner, plugin.views)


async def views_in(client: NATS, bucket: str) -> dict[str, Any]:
    """Every key of a views bucket (checkpoints included), decoded."""
    stored = await read_bucket(client.jetstream(), bucket)
    return {key: orjson.loads(raw) for key, raw in stored.items()}


def without_checkpoints(values: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if not k.startswith("checkpoint.")}


async def wait_written(client: NATS, plugin: Plugin) -> str:
    """Wait until the plugin's live bucket holds everything in the log; returns its name."""
    js = client.jetstream()

    async def written() -> bool:
        last = (await js.stream_info("LLM_EVENTS")).state.last_seq
        bucket = (await read_active_views(js)).bucket
        stored = await views_in(client, bucket)
        checkpoints = [v["seq"] for k, v in stored.items() if k.startswith("checkpoint.")]
        return (
            runner(plugin).bucket == bucket and len(checkpoints) == 4 and min(checkpoints) >= last
        )

    await wait_until(written, within=15, interval=0.05)
    return (await read_active_views(js)).bucket


# ------------------------------------------------------------------ rebuild and verify


async def test_rebuild_equals_the_live_views_and_the_plugin_switches_to_it(
    start: PluginStarter,
    nats_server: EmbeddedNatsServer,
    client: NATS,
    fake_llm: FakeLLMServer,
    replay_log: EventLog,
) -> None:
    """After a mixed history with a crash, the rebuilt bucket equals the live one key for key;
    the running plugin moves to it, and what it folds next lands there."""
    config = history_config(fake_llm)
    plugin = await start(config)
    await mixed_history(client)
    await plugin.stop()
    plugin = await crash_mid_turn(nats_server, client, config)
    try:
        live_bucket = await wait_written(client, plugin)
        live = await views_in(client, live_bucket)
        assert any(k.startswith("memories.") for k in live)

        report = await run_rebuild(replay_log, config)

        assert (report.previous, report.bucket, report.switched) == ("llm_data", "llm_data_2", True)
        assert report.skipped == 0
        rebuilt = await views_in(client, "llm_data_2")
        assert without_checkpoints(rebuilt) == without_checkpoints(live)
        end = (await client.jetstream().stream_info("LLM_EVENTS")).state.last_seq
        # Each checkpoint holds the turns open at its sequence: the crashed turn.
        open_turns = {
            turn: view["user"]
            for key, view in rebuilt.items()
            if key.startswith("usage.")
            for turn in view["open_turns"]
        }
        assert len(open_turns) == 1
        assert {k: v for k, v in rebuilt.items() if k.startswith("checkpoint.")} == {
            f"checkpoint.{name}": {"seq": end, "open_turns": open_turns}
            for name in ("context", "memories", "settings", "usage")
        }
        await wait_until(lambda: runner(plugin).bucket == "llm_data_2", within=10)

        assert (await command(client, "After the switch", channel="a"))["success"]
        assert await wait_written(client, plugin) == "llm_data_2"
        assert (await run_verify(replay_log, config)).ok
        after = await views_in(client, "llm_data_2")
        said = after["messages.a.recent"]["messages"][-2]["content"]  # sealed, as in the log
        assert await replay_log.keyring.open_text(said) == "After the switch"
    finally:
        await stop_plugin(plugin, plugin.nc)


async def test_verify_reports_a_tampered_view_until_a_rebuild_fixes_it(
    start: PluginStarter, client: NATS, fake_llm: FakeLLMServer, replay_log: EventLog
) -> None:
    """A changed, a deleted and an invented key each show up with live and rebuilt values."""
    config = history_config(fake_llm)
    plugin = await start(config)
    await mixed_history(client)
    bucket = await wait_written(client, plugin)
    assert (await run_verify(replay_log, config)).ok
    kv = await client.jetstream().key_value(bucket)
    memory = next(k for k in await views_in(client, bucket) if k.startswith("memories."))
    changed = {**(await views_in(client, bucket))[memory], "content": "Bob likes COBOL"}
    await kv.put(memory, orjson.dumps(changed))
    await kv.delete(usage_key("bob"))
    await kv.put(memory_key("a", "deadbeef"), orjson.dumps({"id": "deadbeef", "seq": 1}))

    report = await run_verify(replay_log, config)

    assert not report.ok
    found = {d.key: d for d in report.differences}
    assert set(found) == {memory, usage_key("bob"), memory_key("a", "deadbeef")}
    assert found[memory].live["content"] == "Bob likes COBOL"
    # Views hold personal text sealed: a difference shows it so, never in the clear.
    assert await replay_log.keyring.open_text(found[memory].rebuilt["content"]) == "Bob likes Rust"
    assert found[usage_key("bob")].live is None
    assert found[usage_key("bob")].rebuilt["total_requests"] == 1
    assert found[memory_key("a", "deadbeef")].rebuilt is None
    text = report.render()
    assert "views differ from the log: 3 of" in text
    assert 'content: live "Bob likes COBOL"' in text
    assert 'rebuilt "sealed:1:memory.a.' in text

    await run_rebuild(replay_log, config)
    assert (await run_verify(replay_log, config)).ok


async def test_rebuild_of_one_view_keeps_the_others_and_dry_run_writes_nothing(
    start: PluginStarter, client: NATS, fake_llm: FakeLLMServer, replay_log: EventLog
) -> None:
    """`--projection usage` refolds only usage; `--dry-run` counts changes and switches nothing."""
    config = history_config(fake_llm)
    plugin = await start(config)
    await mixed_history(client)
    bucket = await wait_written(client, plugin)
    kv = await client.jetstream().key_value(bucket)
    views = await views_in(client, bucket)
    memory = next(k for k in views if k.startswith("memories."))
    await kv.put(memory, orjson.dumps({**views[memory], "importance": 99}))
    await kv.put(usage_key("bob"), orjson.dumps({**views[usage_key("bob")], "total_tokens": 1}))

    dry = await run_rebuild(replay_log, config, dry_run=True)
    assert dry.dry_run
    assert not dry.switched
    assert dry.changes is not None
    assert dry.changes["changed"] == 2
    assert (await read_active_views(client.jetstream())).bucket == bucket
    with pytest.raises(BucketNotFoundError):
        await client.jetstream().key_value(dry.bucket)

    partial = await run_rebuild(replay_log, config, projection_names=["usage"])
    assert partial.projections == ["usage"]
    assert partial.switched
    report = await run_verify(replay_log, config)
    assert [d.key for d in report.differences] == [memory]  # copied as it was
    assert (await views_in(client, partial.bucket))[usage_key("bob")] == views[usage_key("bob")]


async def test_rebuild_while_the_plugin_takes_traffic_loses_nothing(
    start: PluginStarter, client: NATS, fake_llm: FakeLLMServer, replay_log: EventLog
) -> None:
    """Turns answered during a rebuild are in the views the plugin switches to."""
    config = history_config(fake_llm)
    config = dataclasses.replace(config, rate_limits=RateLimitsConfig(requests_per_minute=None))
    plugin = await start(config)
    await mixed_history(client)

    async def traffic() -> None:
        for number in range(20):
            assert (await command(client, f"busy {number}", channel="t", user="tess"))["success"]

    _, first = await asyncio.gather(traffic(), run_rebuild(replay_log, config))
    await wait_until(lambda: runner(plugin).bucket == first.bucket, within=20)
    await wait_written(client, plugin)
    assert (await run_verify(replay_log, config)).ok
    usage = runner(plugin).get(usage_key("tess"))
    assert usage is not None
    assert usage["total_requests"] == 20

    second = await run_rebuild(replay_log, config)
    assert (second.previous, second.bucket, second.deleted) == (
        first.bucket,
        "llm_data_3",
        "llm_data",
    )
    await wait_until(lambda: runner(plugin).bucket == second.bucket, within=20)
    third = await run_rebuild(replay_log, config)
    assert third.deleted == first.bucket  # the one before the replaced one goes
    await wait_until(lambda: runner(plugin).bucket == third.bucket, within=20)
    assert (await command(client, "after three rebuilds", channel="t", user="tess"))["success"]
    await wait_written(client, plugin)
    assert (await run_verify(replay_log, config)).ok


# ------------------------------------------------------------------ state at a moment


async def test_state_at_a_sequence_or_time_is_the_exact_past_state(
    start: PluginStarter, client: NATS, fake_llm: FakeLLMServer, replay_log: EventLog
) -> None:
    """A memory forgotten later is there before (its text `[erased]`: the forget destroyed
    its key); the persona and usage are as they were."""
    config = history_config(fake_llm)
    await start(config)
    await mixed_history(client)
    events = await log_events(client)
    added = next((s, e) for s, e in events if isinstance(e, MemoryAdded))
    forgotten_seq = next(s for s, e in events if isinstance(e, MemoryForgotten))

    before = await channel_state(replay_log, config, "a", Moment(seq=forgotten_seq - 1))
    assert [m["content"] for m in before["memories"]] == ["[erased]", "Bob likes Rust"]
    assert before["persona"] == "technical"
    assert before["as_of"]["seq"] < forgotten_seq
    now = await channel_state(replay_log, config, "a", Moment())
    assert [m["content"] for m in now["memories"]] == ["Bob likes Rust"]

    seq, event = added
    just_after = event.at + timedelta(microseconds=1)
    at_time = await channel_state(replay_log, config, "a", Moment(at=just_after))
    assert [m["id"] for m in at_time["memories"]] == [cast(MemoryAdded, event).memory_id]
    assert at_time["as_of"]["seq"] == seq
    assert [m["content"] for m in at_time["messages"] if m["role"] == "user"] == [
        "Hello there",
        "How are you?",
    ]
    first = await channel_state(replay_log, config, "a", Moment(seq=1))
    assert first["memories"] == []
    assert first["persona"] == "default"

    carol_rejected = next(s for s, e in events if isinstance(e, TurnRejected))
    carol = await user_state(replay_log, config, "carol", Moment(seq=carol_rejected))
    assert carol["rate_limited"] is True
    assert carol["rate_limits_remaining"]["requests_minute"] == 0
    assert carol["usage"]["rejected_today"] == 1
    earlier = await user_state(replay_log, config, "carol", Moment(seq=carol_rejected - 20))
    assert (earlier["usage"] or {}).get("rejected_today", 0) == 0


# ------------------------------------------------------------------ audit


async def test_audit_totals_equal_the_usage_view_and_the_usage_service(
    start: PluginStarter, client: NATS, fake_llm: FakeLLMServer, replay_log: EventLog
) -> None:
    """All-time totals equal `total_*`, today's equal `rosey.llm.usage`; rows trace to seqs."""
    config = history_config(fake_llm)
    plugin = await start(config)
    await mixed_history(client)
    await command(client, "One more in b", channel="b", user="alice")
    events = await log_events(client)
    views = runner(plugin)

    for user in ("alice", "bob", "carol", "sam"):
        report = await run_audit(replay_log, user=user, by="channel")
        usage = views.get(usage_key(user))
        assert usage is not None
        assert report.totals.requests == usage["total_requests"]
        assert report.totals.tokens == usage["total_tokens"]
        today = await run_audit(
            replay_log,
            user=user,
            by=None,
            since=datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0),
        )
        service = await raw_request(client, "rosey.llm.usage", orjson.dumps({"user": user}))
        assert today.totals.requests == service["requests_today"] == usage["requests_today"]
        assert today.totals.tokens == service["tokens_today"] == usage["tokens_today"]
        assert today.totals.rejected == usage["rejected_today"]
        for row in report.rows:
            counted = [
                s
                for s, e in events
                if isinstance(e, TurnAdmitted | TurnRejected | TokensSpent)
                and e.user == user
                and (e.channel or "-") == row.group
            ]
            assert (row.first_seq, row.last_seq, row.events) == (
                min(counted),
                max(counted),
                len(counted),
            )

    everyone = await run_audit(replay_log, user=None, by=None)
    users = [row.user for row in everyone.rows]
    tokens = [row.tokens for row in everyone.rows]
    assert tokens == sorted(tokens, reverse=True)
    assert {"alice", "bob", "carol", "sam", "service"} <= {u for u in users if u}
    spent = [e for _, e in events if isinstance(e, TokensSpent)]
    assert everyone.totals.tokens == sum(e.prompt_tokens + e.completion_tokens for e in spent)
    carol = next(row for row in everyone.rows if row.user == "carol")
    assert (carol.requests, carol.rejected) == (3, 1)
    by_purpose = await run_audit(replay_log, user="service", by="purpose")
    assert [(r.group, r.requests) for r in by_purpose.rows] == [("complete", 1)]


# ------------------------------------------------------------------ old schema versions


@pytest.fixture
def old_schemas() -> Iterator[None]:
    """Version 0 of MemoryAdded (`text`, no importance) and TokensSpent (`tokens` in total),
    upcast to today's version 1 for the duration of one test."""

    def memory_added_v0(body: dict[str, Any]) -> dict[str, Any]:
        upgraded = {k: v for k, v in body.items() if k != "text"}
        return {**upgraded, "content": body["text"], "importance": 3}

    def tokens_spent_v0(body: dict[str, Any]) -> dict[str, Any]:
        upgraded = {k: v for k, v in body.items() if k != "tokens"}
        prompt, completion = body["tokens"]
        return {**upgraded, "prompt_tokens": prompt, "completion_tokens": completion}

    added = {("MemoryAdded", 0): memory_added_v0, ("TokensSpent", 0): tokens_spent_v0}
    UPCASTERS.update(added)
    try:
        yield
    finally:
        for key in added:
            UPCASTERS.pop(key, None)


def as_version_0(event: Event) -> bytes:
    """The event as an older llm-es would have written it (types without a v0 unchanged)."""
    body = orjson.loads(encode_event(event))
    if isinstance(event, MemoryAdded | TokensSpent):
        body["schema"] = 0
    if isinstance(event, MemoryAdded):
        body["text"] = body.pop("content")
        del body["importance"]
    if isinstance(event, TokensSpent):
        body["tokens"] = [body.pop("prompt_tokens"), body.pop("completion_tokens")]
    return orjson.dumps(body)


@pytest.mark.usefixtures("old_schemas")
async def test_a_log_written_with_an_older_schema_replays_into_todays_views(
    nats_server: EmbeddedNatsServer,
    client: NATS,
    fake_llm: FakeLLMServer,
    replay_log: EventLog,
) -> None:
    """Version-0 events in the log are upcast on read by the plugin, rebuild, state and audit."""
    config = history_config(fake_llm)
    store = EventStore(client, client.jetstream())
    await store.ensure_stream()
    at = datetime.now(UTC)
    old = [
        MemoryAdded(
            at=at,
            memory_id="0ld0ld00",
            channel="a",
            user_id="olga",
            content="Olga keeps bees",
            category="fact",
            importance=3,
        ),
        TurnAdmitted(
            at=at,
            turn_id="1" * 32,
            channel="a",
            user="olga",
            source="command",
            persona="default",
            provider="ollama",
            model="llama3.2",
            message="hi",
            reserved_tokens=100,
            max_tokens=90,
        ),
        TokensSpent(
            at=at,
            turn_id="1" * 32,
            channel="a",
            user="olga",
            purpose="chat",
            provider="ollama",
            model="llama3.2",
            prompt_tokens=11,
            completion_tokens=7,
            estimated=False,
        ),
    ]
    for event in old:
        await client.publish(store.subject_for(event), as_version_0(event))
    await client.flush()
    plugin, nc = await start_plugin(nats_server.url, config)
    try:
        await command(client, "remember Olga also keeps goats", channel="a", user="olga")
        await wait_written(client, plugin)
        memory = runner(plugin).get(memory_key("a", "0ld0ld00"))
        assert memory is not None
        assert memory["content"] == "Olga keeps bees"

        report = await run_rebuild(replay_log, config)
        assert report.skipped == 0
        assert (await run_verify(replay_log, config)).ok
        state = await channel_state(replay_log, config, "a", Moment())
        assert [m["content"] for m in state["memories"]] == [
            "Olga keeps bees",
            "Olga also keeps goats",
        ]
        audit = await run_audit(replay_log, user="olga", by=None)
        assert (audit.totals.prompt_tokens, audit.totals.completion_tokens) == (11, 7)
        olga = await user_state(replay_log, config, "olga", Moment())
        assert olga["usage"]["total_tokens"] == 18
    finally:
        await stop_plugin(plugin, nc)


async def test_the_fold_matches_the_plugins_projections(fake_llm: FakeLLMServer) -> None:
    """`select_projections` builds exactly the plugin's views (same names, same settings)."""
    config = history_config(fake_llm)
    names = [p.name for p in select_projections(config)]
    assert names == ["context", "memories", "settings", "usage"]
    assert [p.name for p in select_projections(config, ["usage", "context"])] == [
        "usage",
        "context",
    ]


async def test_a_plugin_started_after_a_rebuild_reads_the_new_bucket_and_ignores_bad_pointers(
    nats_server: EmbeddedNatsServer, client: NATS, fake_llm: FakeLLMServer, replay_log: EventLog
) -> None:
    """With no plugin running, a rebuild still switches; the next start uses that bucket.
    A pointer to a bucket that does not exist is refused: the plugin stays where it is."""
    config = history_config(fake_llm)
    plugin, nc = await start_plugin(nats_server.url, config)
    await mixed_history(client)
    await stop_plugin(plugin, nc)

    report = await run_rebuild(replay_log, config)
    plugin, nc = await start_plugin(nats_server.url, config)
    try:
        assert runner(plugin).bucket == report.bucket
        assert (await command(client, "Back again", channel="a", user="zoe"))["success"]
        await wait_written(client, plugin)
        assert (await run_verify(replay_log, config)).ok

        meta = await client.jetstream().key_value("llm_meta")
        await meta.put("views.active", orjson.dumps({"bucket": "llm_data_99", "generation": 99}))
        assert (await command(client, "Still here", channel="a", user="zoe"))["success"]
        await asyncio.sleep(0.3)
        assert runner(plugin).bucket == report.bucket
    finally:
        await stop_plugin(plugin, nc)
