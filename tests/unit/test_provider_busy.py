"""Waiting for a free connection is its own failure: "<Label> is busy", not a model timeout."""

from __future__ import annotations

import httpx

from llm_es.errors import ProviderBusy, ProviderTimeout
from llm_es.providers.failures import ProviderFailures
from llm_es.providers.retry import is_retryable
from llm_es.service.fallback import is_outage

FAILURES = ProviderFailures(
    name="ollama", label="Ollama", url="http://127.0.0.1:11434", timeout=8.0, secrets=()
)


def test_a_pool_timeout_is_busy_and_not_retried_but_falls_back() -> None:
    """httpx.PoolTimeout (every connection taken for the whole wait) reads "Ollama is busy: no
    free connection within 8s"; it is not retried (the pool stays full a while) but another
    provider may answer; a read timeout is still "did not answer"."""
    busy = FAILURES.transport_error(httpx.PoolTimeout("pool"), mid_stream=False)
    assert isinstance(busy, ProviderBusy)
    assert str(busy) == "Ollama is busy: no free connection within 8s"
    assert not is_retryable(busy)
    assert is_outage(busy)
    slow = FAILURES.transport_error(httpx.ReadTimeout("read"), mid_stream=False)
    assert isinstance(slow, ProviderTimeout)
    assert str(slow) == "Ollama did not answer within 8s"
