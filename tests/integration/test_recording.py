"""The write cycle on a real JetStream: events sent without acks, confirmed by the views' fold."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import pytest
from nats.aio.client import Client as NATS

from llm_es.domain.events import (
    ContextReset,
    Event,
    PersonaSwitched,
    TurnAdmitted,
    TurnCompleted,
    TurnFailed,
)
from llm_es.domain.views import QUARANTINE_KEY, settings_key, usage_key
from llm_es.errors import EventsQuarantined, OperationalError
from llm_es.service import recording
from llm_es.service.recording import Recorder
from llm_es.store.log import EventStore
from projections.runner import ViewRunner, build_view_runner
from tests.support.harness import log_events, make_config

TURN = "a" * 32


class LosingStore(EventStore):
    """A store whose unacknowledged sends never reach the server (a reconnect ate them)."""

    async def send(self, events: Sequence[Event]) -> None:
        del events


@pytest.fixture
async def store(client: NATS) -> EventStore:
    event_store = EventStore(client, client.jetstream())
    await event_store.ensure_stream()
    return event_store


@pytest.fixture
async def views(client: NATS, store: EventStore) -> AsyncIterator[ViewRunner]:
    runner = build_view_runner(client, client.jetstream(), store, make_config("http://unused"))
    await runner.start()
    try:
        yield runner
    finally:
        await runner.stop()


@pytest.fixture
def short_confirm(monkeypatch: pytest.MonkeyPatch) -> None:
    """Give up on the fold's confirmation after 50 ms (1 s in service) to keep tests short."""
    monkeypatch.setattr(recording, "CONFIRM_SECONDS", 0.05)


async def test_record_returns_once_the_views_include_the_events(
    client: NATS, store: EventStore, views: ViewRunner
) -> None:
    """Both events are in the log, in order, and folded into the views when record returns."""
    reset = ContextReset(channel="lobby", user="alice")
    switched = PersonaSwitched(channel="lobby", user="alice", persona="concise")
    await Recorder(store, views).record(reset, switched)
    assert views.position == 2
    assert (views.get(settings_key("lobby")) or {})["persona"] == "concise"
    assert [(seq, event.id) for seq, event in await log_events(client)] == [
        (1, reset.id),
        (2, switched.id),
    ]


@pytest.mark.usefixtures("short_confirm")
async def test_events_lost_on_the_way_are_appended_again_with_acks(
    client: NATS, store: EventStore, views: ViewRunner
) -> None:
    """When the fold never shows them, record appends them with acks and waits for those."""
    losing = LosingStore(client, client.jetstream())
    switched = PersonaSwitched(channel="lobby", user="alice", persona="creative")
    await Recorder(losing, views).record(switched)
    assert views.position == 1
    assert (views.get(settings_key("lobby")) or {})["persona"] == "creative"
    assert [event.id for _, event in await log_events(client)] == [switched.id]


@pytest.mark.usefixtures("short_confirm")
async def test_recording_a_stored_event_again_stores_it_once(
    client: NATS, store: EventStore, views: ViewRunner
) -> None:
    """The server drops the repeat as a duplicate (never folded); the acked retry names it."""
    recorder = Recorder(store, views)
    switched = PersonaSwitched(channel="lobby", user="alice", persona="technical")
    await recorder.record(switched)
    await recorder.record(switched)
    assert [event.id for _, event in await log_events(client)] == [switched.id]
    assert views.position == 1


@pytest.mark.usefixtures("short_confirm")
async def test_events_no_stream_takes_raise_operational_error(
    client: NATS, views: ViewRunner
) -> None:
    """Sent where no stream listens, the events are never folded, and the acked retry says why."""
    nowhere = EventStore(client, client.jetstream(), stream="NONE", prefix="nowhere.ev")
    with pytest.raises(OperationalError, match="no stream answers"):
        await Recorder(nowhere, views).record(ContextReset(channel="lobby", user="alice"))


@pytest.mark.usefixtures("short_confirm")
@pytest.mark.parametrize("confirm_within", [None, 5.0])
async def test_an_end_arriving_after_its_turn_was_closed_is_reported_as_quarantined(
    client: NATS, store: EventStore, views: ViewRunner, confirm_within: float | None
) -> None:
    """The owner's end of a turn that recovery already closed is stored but quarantined
    by the turn rule: record says so (EventsQuarantined) instead of reporting it recorded,
    and the views keep the first end."""
    admitted = TurnAdmitted(
        channel="lobby",
        user="alice",
        turn_id=TURN,
        source="chat",
        persona="default",
        provider="ollama",
        model="m",
        message="hi",
        reserved_tokens=100,
        max_tokens=50,
    )
    closed = TurnFailed(
        channel="lobby", user="alice", turn_id=TURN, error_type="abandoned", error="gone"
    )
    recorder = Recorder(store, views)
    await recorder.record(admitted, closed)
    late = TurnCompleted(
        channel="lobby",
        user="alice",
        turn_id=TURN,
        content="too late",
        provider="ollama",
        model="m",
        latency_ms=1.0,
        finish_reason="stop",
    )
    with pytest.raises(EventsQuarantined, match="events at \\[3\\] were stored but quarantined"):
        await recorder.record(late, confirm_within=confirm_within)
    quarantined = views.get(QUARANTINE_KEY)
    assert quarantined is not None
    assert [e["seq"] for e in quarantined["events"]] == [3]
    usage = views.get(usage_key("alice"))
    assert usage is not None
    assert usage["open_turns"] == {}
