"""Replicas only go up: the fit-up of an existing stream or KV bucket never lowers them."""

from __future__ import annotations

import pytest
from nats.js import api

from llm_es.store.kv import raised_replicas
from llm_es.store.stream_settings import event_log_config, fitted_stream_config


def _stream(replicas: int | None) -> api.StreamConfig:
    return api.StreamConfig(name="KV_llm_data", subjects=["$KV.llm_data.>"], num_replicas=replicas)


@pytest.mark.parametrize(("current", "wanted", "fitted"), [(1, 3, 3), (None, 3, 3), (1, 5, 5)])
def test_a_bucket_below_the_wanted_replicas_is_raised(
    current: int | None, wanted: int, fitted: int
) -> None:
    """A bucket an R1 start created is raised to `nats.replicas`, its other settings kept."""
    before = _stream(current)
    before.max_bytes = 1234
    raised = raised_replicas(before, wanted)
    assert raised is not None
    assert raised.num_replicas == fitted
    assert (raised.name, raised.subjects, raised.max_bytes) == (
        "KV_llm_data",
        before.subjects,
        1234,
    )


@pytest.mark.parametrize(("current", "wanted"), [(3, 1), (5, 3), (3, 3), (1, 1), (None, 1)])
def test_a_bucket_at_or_above_the_wanted_replicas_is_left_alone(
    current: int | None, wanted: int
) -> None:
    """An operator's higher count (or an equal one) needs no update: None, nothing sent."""
    assert raised_replicas(_stream(current), wanted) is None


@pytest.mark.parametrize(("current", "wanted", "fitted"), [(1, 3, 3), (3, 1, 3), (5, 3, 5)])
def test_the_log_stream_replicas_only_go_up(current: int, wanted: int, fitted: int) -> None:
    """`ensure_stream`'s fit-up takes the higher of the stream's and the config's replicas."""
    existing = event_log_config("LLM_EVENTS", "llm.ev", replicas=current)
    wanted_config = event_log_config("LLM_EVENTS", "llm.ev", replicas=wanted)
    assert fitted_stream_config(existing, wanted_config).num_replicas == fitted
