"""Several llm-es instances on one NATS server: exact limits, each request answered once."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from nats.aio.client import Client as NATS

from llm_es.config import RateLimitsConfig
from llm_es.domain.events import TokensSpent, TurnAdmitted, TurnRejected
from llm_es.domain.views import usage_key
from tests.integration.conftest import PluginStarter
from tests.support.fake_llm import FakeLLMServer
from tests.support.harness import command, log_events, make_config, raw_request

INSTANCES = 3


async def test_fifty_concurrent_chats_from_three_instances_admit_exactly_the_limit(
    start: PluginStarter, client: NATS, fake_llm: FakeLLMServer
) -> None:
    """50 concurrent chats for one user across 3 instances, 7 requests/minute: exactly 7 are
    admitted, every request is answered once, the 43 refusals are recorded once, and the
    usage view agrees with the log."""
    config = make_config(fake_llm.base_url, rate_limits=RateLimitsConfig(7, None, None, None))
    plugins = [await start(config) for _ in range(INSTANCES)]
    answers = await asyncio.gather(
        *(command(client, f"burst {n}", channel=f"room{n % 5}") for n in range(50))
    )
    assert sum(1 for a in answers if a["success"]) == 7
    assert all(
        a["error"].startswith("Rate limit: 7 requests/minute") for a in answers if not a["success"]
    )
    events = [e for _, e in await log_events(client)]
    assert sum(isinstance(e, TurnAdmitted) for e in events) == 7
    assert sum(isinstance(e, TurnRejected) for e in events) == 1
    assert len(fake_llm.chat_requests) == 7
    for plugin in plugins:
        assert plugin.views is not None
        await plugin.views.catch_up()
        usage = plugin.views.get(usage_key("alice"))
        assert usage is not None
        assert usage["requests_today"] == 7
        assert usage["rejected_today"] == 1
        assert usage["open_turns"] == {}


async def test_token_limit_under_concurrency_is_never_exceeded(
    start: PluginStarter, client: NATS, fake_llm: FakeLLMServer
) -> None:
    """Reservations across instances keep the day's spend within the token limit."""
    fake_llm.usage = (20, 30)
    config = make_config(
        fake_llm.base_url,
        rate_limits=RateLimitsConfig(None, None, None, 600),
        max_tokens=30,
        max_concurrent_turns_per_channel=None,  # 40 at once in one channel: only the tokens limit
    )
    for _ in range(INSTANCES):
        await start(config)
    answers = await asyncio.gather(*(command(client, f"t{n}") for n in range(40)))
    admitted = sum(1 for a in answers if a["success"])
    spent = sum(
        e.prompt_tokens + e.completion_tokens
        for _, e in await log_events(client)
        if isinstance(e, TokensSpent)
    )
    assert admitted > 0
    assert spent <= 600
    refused = [a["error"] for a in answers if not a["success"]]
    assert refused
    assert all(r.startswith("Token limit: 600 tokens/day") for r in refused)


async def test_service_requests_are_shared_and_answered_once(
    start: PluginStarter, client: NATS
) -> None:
    """With several instances, each service request gets exactly one answer."""
    for _ in range(INSTANCES):
        await start()
    inbox = client.new_inbox()
    answers: list[dict[str, Any]] = []
    all_answered = asyncio.Event()

    async def collect(msg: Any) -> None:
        answers.append(orjson.loads(msg.data))
        if len(answers) >= 12:
            all_answered.set()

    sub = await client.subscribe(inbox, cb=collect)
    for n in range(12):
        body = {"channel": "c", "user": f"user{n}", "message": "hi"}
        await client.publish("rosey.llm.chat", orjson.dumps(body), reply=inbox)
    async with asyncio.timeout(15):
        await all_answered.wait()
    await asyncio.sleep(0.3)  # any duplicate answer would have arrived by now
    await sub.unsubscribe()
    assert len(answers) == 12
    assert all(a["success"] for a in answers)
    info = await raw_request(client, "$SRV.PING.rosey-llm", b"")
    assert info["name"] == "rosey-llm"


async def test_each_turn_sees_the_previous_one_whichever_instance_answers(
    start: PluginStarter, client: NATS, fake_llm: FakeLLMServer
) -> None:
    """Read-your-writes across instances: consecutive turns in one channel, answered by
    whichever instance the queue group picks, always carry the previous exchange."""
    fake_llm.reply = lambda messages: f"answer to {messages[-1]['content']}"
    unlimited = RateLimitsConfig(None, None, None, None)
    for _ in range(INSTANCES):
        await start(max_context_messages=2, rate_limits=unlimited)
    for n in range(12):
        assert (await command(client, f"turn {n}"))["success"]
        sent = fake_llm.chat_requests[-1].body
        assert sent is not None
        if n:
            assert [m["content"] for m in sent["messages"][1:-1]] == [
                f"alice: turn {n - 1}",
                f"answer to alice: turn {n - 1}",
            ]
