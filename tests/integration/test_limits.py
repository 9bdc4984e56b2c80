"""Rate and token limits through NATS: exact counts, seed texts, rejections recorded."""

from __future__ import annotations

import asyncio
import re

from nats.aio.client import Client as NATS

from llm_es.config import RateLimitsConfig
from llm_es.domain.events import TurnRejected
from tests.integration.conftest import PluginStarter
from tests.support.fake_llm import FakeLLMServer
from tests.support.harness import command, event_types, log_events

UNLIMITED = RateLimitsConfig(
    requests_per_minute=None, requests_per_hour=None, requests_per_day=None, tokens_per_day=None
)


def limits(**kwargs: int | None) -> RateLimitsConfig:
    values: dict[str, int | None] = {
        "requests_per_minute": None,
        "requests_per_hour": None,
        "requests_per_day": None,
        "tokens_per_day": None,
    }
    values.update(kwargs)
    return RateLimitsConfig(**values)


async def test_minute_limit_rejects_the_next_request_with_seed_text(
    start: PluginStarter, client: NATS
) -> None:
    """With 3 requests/minute the 4th is refused: seed text, TurnRejected, no provider call."""
    await start(rate_limits=limits(requests_per_minute=3))
    for n in range(3):
        assert (await command(client, f"message {n}"))["success"] is True
    refused = await command(client, "one too many")
    assert refused["success"] is False
    assert re.fullmatch(r"Rate limit: 3 requests/minute \(resets in \d+s\)", refused["error"])
    rejected = [e for _, e in await log_events(client) if isinstance(e, TurnRejected)]
    assert len(rejected) == 1
    assert (rejected[0].window, rejected[0].limit) == ("minute", 3)
    # Another user has a budget of their own.
    assert (await command(client, "hi", user="bob"))["success"] is True


async def test_hour_and_day_limits(start: PluginStarter, client: NATS) -> None:
    """Hour and day windows count admitted turns per user across channels."""
    await start(rate_limits=limits(requests_per_hour=2, requests_per_day=5))
    assert (await command(client, "a", channel="x"))["success"]
    assert (await command(client, "b", channel="y"))["success"]
    refused = await command(client, "c", channel="z")
    assert re.fullmatch(r"Rate limit: 2 requests/hour \(resets in \d+s\)", refused["error"])


async def test_day_limit_text(start: PluginStarter, client: NATS) -> None:
    """The day limit names the day window."""
    await start(rate_limits=limits(requests_per_day=1))
    assert (await command(client, "a"))["success"]
    refused = await command(client, "b")
    assert re.fullmatch(r"Rate limit: 1 requests/day \(resets in \d+s\)", refused["error"])


async def test_token_limit_caps_and_then_refuses(
    start: PluginStarter, client: NATS, fake_llm: FakeLLMServer
) -> None:
    """Reservations cap the answer length to the day's headroom; a spent budget refuses turns."""
    fake_llm.usage = (40, 20)
    await start(rate_limits=limits(tokens_per_day=200), max_tokens=1000)
    first = await command(client, "hello")
    assert first["success"] is True
    sent = fake_llm.chat_requests[0].body
    assert sent is not None
    # The completion cap sent to Ollama never exceeds what is left of the day.
    assert sent["options"]["num_predict"] < 200
    outcomes = [await command(client, f"turn {n}") for n in range(5)]
    refused = [o for o in outcomes if not o["success"]]
    assert refused, "the token budget must run out"
    assert re.fullmatch(r"Token limit: 200 tokens/day \(resets in \d+s\)", refused[0]["error"])


async def test_concurrent_turns_of_one_user_never_exceed_the_minute_limit(
    start: PluginStarter, client: NATS
) -> None:
    """20 concurrent requests for one user with a limit of 7: exactly 7 are admitted; the 13
    refusals are answered alike and recorded once."""
    await start(rate_limits=limits(requests_per_minute=7))
    answers = await asyncio.gather(
        *(command(client, f"burst {n}", channel=f"c{n % 3}") for n in range(20))
    )
    assert sum(1 for a in answers if a["success"]) == 7
    types = await event_types(client)
    assert types.count("TurnAdmitted") == 7
    assert types.count("TurnRejected") == 1


async def test_unlimited_config_admits_everything(start: PluginStarter, client: NATS) -> None:
    """null limits disable a window."""
    await start(rate_limits=UNLIMITED)
    answers = await asyncio.gather(*(command(client, f"m{n}") for n in range(15)))
    assert all(a["success"] for a in answers)
