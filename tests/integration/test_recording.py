"""The write cycle on a real JetStream: events sent without acks, confirmed by the views' fold."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import pytest
from nats.aio.client import Client as NATS

from llm_es.domain.events import ContextReset, Event, PersonaSwitched
from llm_es.domain.views import settings_key
from llm_es.errors import OperationalError
from llm_es.service import recording
from llm_es.service.recording import Recorder
from llm_es.store.log import EventStore
from projections.runner import ViewRunner, build_view_runner
from tests.support.harness import log_events, make_config


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
