"""Benchmark of the event codec: `decode_event` per event over a realistic mix of stored events.

Builds `--events` events (default 100 000) of the real event classes in the
proportions a chat community writes them (most turns admitted, booked and
completed; some rejected or failed; memories, persona switches, resets and
summaries between), encodes each once with `encode_event`, then times
`decode_event` over all of them, best of `--repeat` rounds. Beside it, the
same bytes through a bare `orjson.loads` (a dict, nothing checked): the floor
any decoder that reads JSON pays, so a figure taken on a busier machine can
be read against its own floor. One JSON object goes to stdout.

    /work/venv/bin/python bench/codec.py
    /work/venv/bin/python bench/codec.py --events 200000 --repeat 7
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import platform
import random
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from importlib import metadata
from typing import Any

import orjson

from llm_es.domain.events import (
    ContextReset,
    ContextSummarized,
    Event,
    MemoryAdded,
    MemoryForgotten,
    MemoryRecalled,
    PersonaSwitched,
    TokensSpent,
    TurnAdmitted,
    TurnCompleted,
    TurnFailed,
    TurnRejected,
)
from llm_es.store.codec import decode_event, encode_event

BASELINE = {
    "decoder": "orjson.loads, then builders generated with exec; types unchecked (to 86a5f3c)",
    "decode_us_per_event": 2.97,
    "orjson_loads_us_per_event": 1.05,
    "command": "/work/venv/bin/python bench/codec.py",
}
"""The hand-made decoder that msgspec replaced, measured by this script (best of several
runs on the 2 shared cores of the development machine; up to 3.3 under load). To measure
it again beside a current run, run this script against the old code:
`mkdir /tmp/old; git archive 86a5f3c llm_es projections | tar -x -C /tmp/old`, then
`PYTHONPATH=/tmp/old /work/venv/bin/python bench/codec.py`."""
START = datetime(2024, 3, 1, tzinfo=UTC)
WORDS = [
    "the",
    "moon",
    "weather",
    "python",
    "rust",
    "cats",
    "dogs",
    "music",
    "tea",
    "why",
    "how",
    "does",
    "a",
    "of",
    "is",
    "it",
]
PROVIDERS = [("ollama", "llama3.2"), ("openrouter", "anthropic/claude-3-sonnet")]


def sentence(rnd: random.Random, low: int, high: int) -> str:
    return " ".join(rnd.choice(WORDS) for _ in range(rnd.randint(low, high)))


def mixed_events(total: int, seed: int) -> Iterator[Event]:
    """`total` events of a synthetic community, in the order the plugin would append them."""
    rnd = random.Random(seed)
    at = START
    made = 0
    turn = 0
    memories: list[str] = []
    while made < total:
        at += timedelta(seconds=rnd.expovariate(1 / 9))
        channel = f"channel-{rnd.randrange(20)}"
        user = f"user-{rnd.randrange(200)}"
        roll = rnd.random()
        batch: list[Event]
        if roll < 0.80:
            turn += 1
            batch = list(turn_events(rnd, at, f"{turn:032x}", channel, user))
        elif roll < 0.86:
            memory_id = f"{rnd.getrandbits(32):08x}"
            memories.append(memory_id)
            batch = [
                MemoryAdded(
                    at=at,
                    memory_id=memory_id,
                    channel=channel,
                    user_id=user,
                    content=sentence(rnd, 4, 20),
                    category=rnd.choice(["fact", "preference", "note"]),
                    importance=rnd.randint(1, 5),
                )
            ]
        elif roll < 0.92:
            found = tuple(rnd.sample(memories, min(len(memories), rnd.randint(0, 5))))
            batch = [
                MemoryRecalled(
                    at=at, channel=channel, user=user, query=sentence(rnd, 1, 4), memory_ids=found
                )
            ]
        elif roll < 0.94 and memories:
            batch = [MemoryForgotten(at=at, channel=channel, user=user, memory_id=memories.pop(0))]
        elif roll < 0.96:
            persona = rnd.choice(["default", "concise", "technical"])
            batch = [PersonaSwitched(at=at, channel=channel, user=user, persona=persona)]
        elif roll < 0.98:
            batch = [ContextReset(at=at, channel=channel, user=rnd.choice([user, None]))]
        else:
            batch = [
                ContextSummarized(
                    at=at,
                    channel=channel,
                    summary=sentence(rnd, 30, 120),
                    through_seq=made,
                    message_count=rnd.randint(8, 40),
                )
            ]
        for event in batch[: total - made]:
            yield event
            made += 1


def turn_events(
    rnd: random.Random, at: datetime, turn_id: str, channel: str, user: str
) -> Iterator[Event]:
    """One `!chat` turn: rejected (10%), or admitted, booked and then completed or failed."""
    provider, model = rnd.choice(PROVIDERS)
    if rnd.random() < 0.10:
        yield TurnRejected(
            at=at,
            turn_id=turn_id,
            channel=channel,
            user=user,
            reason="rate_limit",
            window="minute",
            limit=10,
            detail="Rate limit: 10 requests/minute (resets in 42s)",
            provider=provider,
        )
        return
    yield TurnAdmitted(
        at=at,
        turn_id=turn_id,
        channel=channel,
        user=user,
        source="command",
        persona="default",
        provider=provider,
        model=model,
        message=sentence(rnd, 3, 30),
        reserved_tokens=600,
        max_tokens=512,
        instance="bench-1",
    )
    later = at + timedelta(seconds=rnd.uniform(0.3, 4))
    yield TokensSpent(
        at=later,
        turn_id=turn_id,
        channel=channel,
        user=user,
        purpose="chat",
        provider=provider,
        model=model,
        prompt_tokens=rnd.randint(50, 2000),
        completion_tokens=rnd.randint(5, 500),
        estimated=False,
        cost=round(rnd.uniform(0, 0.01), 6) if provider == "openrouter" else None,
    )
    if rnd.random() < 0.05:
        yield TurnFailed(
            at=later,
            turn_id=turn_id,
            channel=channel,
            user=user,
            error_type="timeout",
            error="no answer within 60s",
        )
        return
    yield TurnCompleted(
        at=later,
        turn_id=turn_id,
        channel=channel,
        user=user,
        content=sentence(rnd, 10, 80),
        provider=provider,
        model=model,
        latency_ms=round(rnd.uniform(300, 4000), 1),
        finish_reason="stop",
        fallback_from=("openrouter",) if rnd.random() < 0.03 else (),
    )


def best_us_per_item(run: Callable[[list[bytes]], object], data: list[bytes], repeat: int) -> float:
    """The fastest of `repeat` passes of `run` over `data`, in microseconds per item."""
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        run(data)
        best = min(best, time.perf_counter() - started)
    return round(best / len(data) * 1e6, 3)


def decode_all(data: list[bytes]) -> None:
    # Each event is dropped once decoded, as a replay drops it once folded: keeping
    # 100k of them alive would time the garbage collector walking them instead.
    for item in data:
        decode_event(item)


def loads_all(data: list[bytes]) -> None:
    for item in data:
        orjson.loads(item)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000, help="events in the mix")
    parser.add_argument("--repeat", type=int, default=5, help="timed passes; the best counts")
    parser.add_argument("--seed", type=int, default=13)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    events = list(mixed_events(args.events, args.seed))
    data = [encode_event(event) for event in events]
    if [decode_event(item) for item in data[:1000]] != events[:1000]:
        sys.exit("decode(encode(event)) differs from the event")
    counts: dict[str, int] = {}
    for event in events:
        counts[event.TYPE] = counts.get(event.TYPE, 0) + 1
    # Only the bytes stay alive while timing: 100k live events would make every
    # collection the timed loops trigger walk them, at a cost that depends on the
    # event classes (msgspec leaves structs of plain values untracked, dataclasses
    # are tracked), not on the decoder.
    del events
    gc.collect()
    load = None
    with contextlib.suppress(OSError):
        load = [round(x, 2) for x in os.getloadavg()]
    result: dict[str, Any] = {
        "env": {
            "python": platform.python_version(),
            "orjson": metadata.version("orjson"),
            "msgspec": metadata.version("msgspec"),
            "cpu_count": os.cpu_count(),
            "load_average": load,
        },
        "params": {"events": len(data), "repeat": args.repeat, "seed": args.seed},
        "mix": dict(sorted(counts.items())),
        "mean_bytes": round(sum(map(len, data)) / len(data), 1),
        "decode_us_per_event": best_us_per_item(decode_all, data, args.repeat),
        "orjson_loads_us_per_event": best_us_per_item(loads_all, data, args.repeat),
        "baseline": BASELINE,
    }
    print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())


if __name__ == "__main__":
    main()
