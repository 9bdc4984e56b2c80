"""A key store without a leader (an election after a node was lost) is waited out for a
few seconds, then refused with a clear operational error, never an internal one."""

from __future__ import annotations

import time

import pytest
from nats.aio.client import Client as NATS

from llm_es.errors import OperationalError
from llm_es.store import keyring
from llm_es.store.keyring import KeyRing


async def test_a_key_store_that_never_answers_fails_clearly_after_its_patience(
    client: NATS, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A JetStream domain nobody serves answers no key request (no responders, as a bucket
    mid-election does): sealing waits `KEY_STORE_PATIENCE_SECONDS`, then says which store
    is unavailable and why."""
    monkeypatch.setattr(keyring, "KEY_STORE_PATIENCE_SECONDS", 0.6)
    ring = KeyRing(client.jetstream(domain="nowhere", timeout=0.5))
    started = time.monotonic()
    with pytest.raises(OperationalError, match=r"key store llm_keys unavailable \(\w+Error\)"):
        await ring.seal_text("user.alice", "hello")
    waited = time.monotonic() - started
    assert 0.6 <= waited < 3.0
