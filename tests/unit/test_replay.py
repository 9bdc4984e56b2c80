"""The replay tools' pure parts: times, subjects, the pull state, the fold, the audit, output."""

from __future__ import annotations

import io
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from nats.aio.msg import Msg

from llm_es.config import Config
from llm_es.domain.events import (
    ContextReset,
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
from llm_es.domain.views import QUARANTINE_KEY, memory_key, usage_key
from llm_es.store.codec import UPCASTERS, encode_event
from llm_es.store.follow import delivery_position
from llm_es.store.log import subject_of
from replay.audit import AuditReport, AuditRow, _Sums
from replay.audit_output import render
from replay.errors import UsageError
from replay.fold import LogFold, select_projections
from replay.progress import Progress
from replay.pull import _PullState
from replay.reading import RawEvent, event_filter
from replay.tail import describe_event, export_line, json_line
from replay.times import parse_moment
from replay.verify import Difference, VerifyReport, compare, describe

NOW = datetime(2024, 5, 17, 15, 30, tzinfo=UTC)
T0 = datetime(2024, 5, 17, 12, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def turn(
    turn_id: str, *, user: str = "alice", channel: str | None = "lobby", t: float = 0
) -> list[Event]:
    return [
        TurnAdmitted(
            at=at(t),
            turn_id=turn_id,
            channel=channel,
            user=user,
            source="command",
            persona="default",
            provider="ollama",
            model="llama3.2",
            message=f"question {turn_id}",
            reserved_tokens=100,
            max_tokens=90,
        ),
        TokensSpent(
            at=at(t + 1),
            turn_id=turn_id,
            channel=channel,
            user=user,
            purpose="chat",
            provider="ollama",
            model="llama3.2",
            prompt_tokens=10,
            completion_tokens=5,
            estimated=False,
            cost=0.25,
        ),
        TurnCompleted(
            at=at(t + 1),
            turn_id=turn_id,
            channel=channel,
            user=user,
            content=f"answer {turn_id}",
            provider="ollama",
            model="llama3.2",
            latency_ms=12.5,
            finish_reason="stop",
        ),
    ]


def raw(events: list[Event]) -> list[RawEvent]:
    """The events as the log stores them: on their own subjects, appended at their `at`."""
    return [
        (seq, subject_of(e), encode_event(e), int(e.at.timestamp() * 1e9))
        for seq, e in enumerate(events, 1)
    ]


# ------------------------------------------------------------------ times


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("now", NOW),
        ("today", datetime(2024, 5, 17, tzinfo=UTC)),
        ("yesterday", datetime(2024, 5, 16, tzinfo=UTC)),
        ("2h", NOW - timedelta(hours=2)),
        ("90s ago", NOW - timedelta(seconds=90)),
        ("-7d", NOW - timedelta(days=7)),
        ("1w", NOW - timedelta(weeks=1)),
        ("2024-05-01", datetime(2024, 5, 1, tzinfo=UTC)),
        ("2024-05-01T10:00", datetime(2024, 5, 1, 10, tzinfo=UTC)),
        ("2024-05-01T10:00:00Z", datetime(2024, 5, 1, 10, tzinfo=UTC)),
        ("2024-05-01T12:00:00+02:00", datetime(2024, 5, 1, 10, tzinfo=UTC)),
    ],
)
def test_moments_operators_type_are_read_as_utc(text: str, expected: datetime) -> None:
    """ISO times and dates (naive = UTC), today/yesterday/now and ages all name a UTC moment."""
    assert parse_moment(text, now=NOW) == expected


def test_an_unreadable_moment_names_the_option_and_the_forms() -> None:
    """A bad time is a usage error that says which option and what is accepted."""
    with pytest.raises(UsageError, match=r"--since: cannot read 'last tuesday': use an ISO"):
        parse_moment("last tuesday", now=NOW, option="--since")


# ------------------------------------------------------------------ subjects and positions


def test_filters_are_one_server_subject_with_types_checked_by_subject() -> None:
    """One type is in the subject; several share `*` and are filtered client side."""
    assert event_filter().subject == "llm.ev.>"
    assert event_filter(channel="a b").subject == "llm.ev.a=20b.*.*"
    assert event_filter(user="_").subject == "llm.ev.*.=5F.*"
    single = event_filter(user="bob", types=["TokensSpent"])
    assert (single.subject, single.types) == ("llm.ev.*.bob.TokensSpent", frozenset())
    several = event_filter(channel="a", types=["MemoryAdded", "MemoryForgotten"])
    assert several.subject == "llm.ev.a.*.*"
    assert several.types == {"MemoryAdded", "MemoryForgotten"}
    assert event_filter(types=["A", "B"]).subject == "llm.ev.>"


def test_delivery_positions_are_read_from_both_reply_forms() -> None:
    """The v1 and the domain/account (v2) forms of `$JS.ACK` give sequence, pending, time."""
    v1 = "$JS.ACK.LLM_EVENTS.c1.1.42.7.1700000000.5"
    v2 = "$JS.ACK.hub.ACCHASH.LLM_EVENTS.c1.1.42.7.1700000000.5.token"
    assert delivery_position(v1) == delivery_position(v2) == (42, 5, 1700000000)


async def test_the_pull_state_batches_filters_and_stops_at_the_end() -> None:
    """Messages gather into batches; types are checked by subject; pending 0 ends the read;
    a 408 with `Nats-Pending-Messages` gives back what it will not deliver; a 409 fails
    the read."""
    state = _PullState(to_seq=None, types=frozenset({"TokensSpent"}), batch_size=2)
    state.requested = 10

    async def deliver(seq: int, type_name: str, pending: int) -> None:
        reply = f"$JS.ACK.S.c.1.{seq}.{seq}.0.{pending}"
        await state.on_msg(Msg(None, subject=f"llm.ev.a.b.{type_name}", reply=reply, data=b"{}"))

    await deliver(1, "TokensSpent", 4)
    await deliver(2, "TurnAdmitted", 3)
    await deliver(3, "TokensSpent", 2)
    assert [[seq for seq, _, _, _ in batch] for batch in state.ready] == [[1, 3]]
    timeout = {"Status": "408", "Description": "Request Timeout", "Nats-Pending-Messages": "5"}
    await state.on_msg(Msg(None, subject="_INBOX.x", headers=timeout))
    assert (state.requested, state.received) == (5, 3)
    await deliver(4, "TokensSpent", 0)
    assert state.finished
    assert [seq for seq, _, _, _ in state.ready[-1]] == [4]
    conflict = _PullState(to_seq=5, types=frozenset(), batch_size=10)
    deleted = {"Status": "409", "Description": "Consumer Deleted"}
    await conflict.on_msg(Msg(None, subject="_INBOX.x", headers=deleted))
    assert conflict.error == "409 Consumer Deleted"


async def test_the_pull_state_stops_at_to_seq_and_gives_back_what_a_408_will_not_send() -> None:
    """A read bounded by `to_seq` ends at it, and a 408's `Nats-Pending-Messages` takes back
    the undelivered part of its request, whatever it delivered before."""
    state = _PullState(to_seq=3, types=frozenset(), batch_size=2)
    state.requested = 4000
    for seq in (1, 2):
        reply = f"$JS.ACK.S.c.1.{seq}.{seq}.0.9"
        await state.on_msg(Msg(None, subject="llm.ev.a.b.TurnAdmitted", reply=reply, data=b"{}"))
    timeout = {"Status": "408", "Description": "Request Timeout", "Nats-Pending-Messages": "1998"}
    await state.on_msg(Msg(None, subject="_INBOX.x", headers=timeout))
    assert (state.requested, state.received) == (2002, 2)
    await state.on_msg(Msg(None, subject="llm.ev.a.b.X", reply="$JS.ACK.S.c.1.3.3.0.9", data=b"x"))
    assert state.finished
    assert list(state.ready) == [
        [(1, "llm.ev.a.b.TurnAdmitted", b"{}", 0), (2, "llm.ev.a.b.TurnAdmitted", b"{}", 0)],
        [(3, "llm.ev.a.b.X", b"x", 0)],
    ]


# ------------------------------------------------------------------ folding


def test_the_fold_equals_the_projections_applied_in_order() -> None:
    """`LogFold.feed` gives the same views as applying each projection event by event,
    including deletions (recorded with their sequence) and skipped unreadable events."""
    events: list[Event] = [
        *turn("t1"),
        MemoryAdded(
            at=at(5),
            memory_id="abcd1234",
            channel="lobby",
            user_id="alice",
            content="Alice likes tea",
            category="fact",
            importance=3,
        ),
        MemoryRecalled(
            at=at(6), channel="lobby", user="bob", query="tea", memory_ids=("abcd1234",)
        ),
        PersonaSwitched(at=at(7), channel="lobby", user="bob", persona="concise"),
        MemoryForgotten(at=at(8), channel="lobby", user="bob", memory_id="abcd1234"),
        ContextReset(at=at(9), channel="lobby", user="bob"),
    ]
    projections = select_projections(Config())
    fold = LogFold(projections)
    stored = [(seq if seq < 5 else seq + 1, *rest) for seq, *rest in raw(events)]
    fold.feed([*stored[:4], (5, "llm.ev.x.y.Junk", b"not json", 0), *stored[4:]])
    expected: dict[str, Any] = {}
    for seq, event in enumerate(events, 1):
        seq = seq if seq < 5 else seq + 1
        for projection in projections:
            for key in projection.keys_for(event):
                updated = projection.apply(key, expected.get(key), event, seq)
                if updated is None:
                    expected.pop(key, None)
                else:
                    expected[key] = updated
    quarantined = fold.values.pop(QUARANTINE_KEY)
    assert fold.values == expected
    assert quarantined == {"seq": 5, "count": 1, "events": [{"seq": 5, "reason": fold.skips[0][1]}]}
    assert fold.removed == {memory_key("lobby", "abcd1234"): 8}
    assert (fold.position, fold.events, fold.skipped) == (9, 8, 1)
    assert fold.skips[0][0] == 5


# ------------------------------------------------------------------ audit


@pytest.fixture
def tokens_spent_v0() -> Iterator[None]:
    """TokensSpent version 0 kept prompt and completion in one `tokens` list."""

    def upcast(body: dict[str, Any]) -> dict[str, Any]:
        prompt, completion = body.pop("tokens")
        return {**body, "prompt_tokens": prompt, "completion_tokens": completion}

    UPCASTERS[("TokensSpent", 0)] = upcast
    try:
        yield
    finally:
        UPCASTERS.pop(("TokensSpent", 0), None)


@pytest.mark.usefixtures("tokens_spent_v0")
def test_audit_sums_by_group_from_json_and_upcasts_old_versions() -> None:
    """Requests, rejections, tokens and cost per day; a v0 event counts like a v1 one;
    other types are ignored, unreadable events skipped; rows carry the sequences they sum."""
    events: list[Event] = [
        *turn("t1", t=0),
        TurnRejected(
            at=at(3),
            turn_id="t2",
            channel="lobby",
            user="alice",
            reason="rate_limit",
            window="minute",
            limit=1,
            detail="Rate limit",
        ),
        *turn("t3", t=86400),
    ]
    sums = _Sums(per_user=False, by="day", since=None, until=None)
    for seq, subject, data, stored_ns in raw(events):
        if seq == 2:
            old = orjson.loads(data)
            old["schema"] = 0
            old["tokens"] = [old.pop("prompt_tokens"), old.pop("completion_tokens")]
            data = orjson.dumps(old)
        sums.feed(seq, subject, data, stored_ns)
    sums.feed(99, "llm.ev._.bob.TokensSpent", b'{"type": "TokensSpent", "schema": 7}', 0)
    rows = {group: row for (_, group), row in sums.rows.items()}
    first, second = rows["2024-05-17"], rows["2024-05-18"]
    assert (first.requests, first.rejected, first.tokens, first.cost) == (1, 1, 15, 0.25)
    assert (first.first_seq, first.last_seq, first.events) == (1, 4, 3)
    assert (second.requests, second.tokens, second.first_seq, second.last_seq) == (1, 15, 5, 6)
    assert (sums.quarantine.count, sums.quarantine.sequences) == (1, [99])


def test_audit_counts_the_tokens_of_a_failed_turn_as_the_usage_view_does() -> None:
    """A turn cut short records an estimated TokensSpent before its TurnFailed: the audit
    counts its tokens (and the estimate), and equals the usage view's day and total."""
    admitted, _, _ = turn("t1")
    cut_short = TokensSpent(
        at=at(1),
        turn_id="t1",
        channel="lobby",
        user="alice",
        purpose="chat",
        provider="ollama",
        model="llama3.2",
        prompt_tokens=40,
        completion_tokens=6,
        estimated=True,
    )
    failed = TurnFailed(
        at=at(1),
        turn_id="t1",
        channel="lobby",
        user="alice",
        error_type="provider_error",
        error="Ollama stream broke off before the answer was complete",
    )
    events: list[Event] = [admitted, cut_short, failed, *turn("t2", t=10)]
    sums = _Sums(per_user=True, by=None, since=None, until=None)
    for stored in raw(events):
        sums.feed(*stored)
    (row,) = sums.rows.values()
    assert (row.requests, row.tokens, row.estimated, row.events) == (2, 61, 1, 4)
    fold = LogFold(select_projections(Config(), ["usage"]))
    fold.feed(raw(events))
    view = fold.values[usage_key("alice")]
    assert (view["tokens_today"], view["total_tokens"], view["open_turns"]) == (61, 61, {})


def test_audit_periods_are_half_open_and_group_service_turns() -> None:
    """`since` is inclusive, `until` exclusive; a turn without a channel groups under `-`."""
    events = [*turn("t1", t=0), *turn("t2", t=100, channel=None)]
    sums = _Sums(per_user=True, by="channel", since=at(0), until=at(100))
    for stored in raw(events):
        sums.feed(*stored)
    assert {key: row.events for key, row in sums.rows.items()} == {("alice", "lobby"): 2}
    everything = _Sums(per_user=True, by="channel", since=None, until=None)
    for stored in raw(events):
        everything.feed(*stored)
    assert set(everything.rows) == {("alice", "lobby"), ("alice", "-")}


def test_audit_renders_table_json_and_csv() -> None:
    """The table aligns and totals, JSON has rows and totals, CSV one line per row."""
    row = AuditRow(
        "alice",
        "2024-05-17",
        requests=2,
        rejected=1,
        prompt_tokens=30,
        completion_tokens=12,
        cost=0.5,
        priced=2,
        events=5,
        first_seq=3,
        last_seq=9,
    )
    report = AuditReport(user=None, by="day", since=None, until=None, log_end=10, rows=[row])
    report.totals.add(row)
    table = render(report, "table").splitlines()
    assert table[0] == "audit of all users by day, the start .. now (log up to sequence 10)"
    assert table[1].split() == [
        "user",
        "day",
        "requests",
        "rejected",
        "prompt",
        "completion",
        "tokens",
        "cost",
        "log",
        "seqs",
    ]
    assert table[2].split() == [
        "alice",
        "2024-05-17",
        "2",
        "1",
        "30",
        "12",
        "42",
        "0.500000",
        "3..9",
    ]
    assert table[-1].split() == ["total", "2", "1", "30", "12", "42", "0.500000", "3..9"]
    as_json = orjson.loads(render(report, "json"))
    assert as_json["rows"][0]["tokens"] == as_json["totals"]["tokens"] == 42
    assert as_json["scope"] == {"all": True}
    csv_lines = render(report, "csv").splitlines()
    assert csv_lines[0].startswith("user,day,requests,rejected,prompt_tokens")
    assert csv_lines[1] == "alice,2024-05-17,2,1,30,12,42,0.5,0,5,3,9"


# ------------------------------------------------------------------ verify


def test_compare_tells_differences_from_views_not_written_yet() -> None:
    """Equal keys pass; a key last changed after the checkpoint and missing (or older) in KV
    is pending; anything else is a difference."""
    projections = select_projections(Config())
    report = VerifyReport(bucket="llm_data", log_end=20, checkpoint=10, folded_to=20)
    live = {
        usage_key("a"): {"seq": 5, "n": 1},
        usage_key("b"): {"seq": 5, "n": 1},
        usage_key("c"): {"seq": 3, "n": 1},
        "usage.ghost": {"seq": 2},
    }
    rebuilt = {
        usage_key("a"): {"seq": 5, "n": 1},
        usage_key("b"): {"seq": 5, "n": 2},
        usage_key("c"): {"seq": 15, "n": 2},
        usage_key("d"): {"seq": 12, "n": 1},
    }
    checkpoints = {p.name: 10 for p in projections}
    compare(report, live, rebuilt, {}, checkpoints, projections)
    assert (report.compared, report.equal, report.pending) == (5, 1, 2)
    assert [d.key for d in report.differences] == [usage_key("b"), "usage.ghost"]
    lines = list(describe(Difference("k", {"a": 1, "b": [1]}, {"a": 2, "b": [1]})))
    assert lines == ["k", "  a: live 1", "     rebuilt 2"]


# ------------------------------------------------------------------ tail and export


def test_tail_lines_are_readable_and_json_lines_carry_the_event() -> None:
    """One line per event: sequence, time, channel, user, type, then its own fields."""
    admitted, spent, _ = turn("0123456789abcdef", channel=None)
    line = describe_event(7, admitted)
    assert line.startswith("#7 2024-05-17T12:00:00Z - alice TurnAdmitted turn_id=01234567")
    assert 'message="question 0123456789abcdef"' in line
    assert "estimated=false" in describe_event(8, spent)
    as_json = orjson.loads(json_line(8, "llm.ev._.alice.TokensSpent", spent))
    assert as_json["seq"] == 8
    assert as_json["event"]["prompt_tokens"] == 10
    exported = orjson.loads(export_line(9, "s", b'{"type": "X", "schema": 1}'))
    assert exported == {"seq": 9, "subject": "s", "event": {"type": "X", "schema": 1}}
    assert orjson.loads(export_line(9, "s", b"\xffnot json"))["event"] is None


def test_progress_is_a_bar_on_a_terminal_and_plain_lines_otherwise() -> None:
    """Counts, percentage, rate and ETA; a final line with the total rate."""
    plain = Progress("rebuild", 1000, stream=io.StringIO(), enabled=False)
    plain.done = 250
    assert plain.render().startswith("rebuild: 250/1,000 events (25%), ")
    assert "events/s, eta " in plain.render()
    assert plain.render(final=True).startswith("rebuild: 250 events in ")

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    bar = Progress("verify", 1000, stream=Terminal(), enabled=False)
    bar.done = 500
    assert bar.render().startswith("verify [##############..............]  50% 500/1,000 ")
