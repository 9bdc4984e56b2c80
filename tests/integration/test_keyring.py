"""The key ring's memory: what this instance sealed it opens without AES-GCM, and erasing
a key forgets those texts like any other."""

from __future__ import annotations

import pytest
from nats.aio.client import Client as NATS

from llm_es.domain.personal_data import ERASED
from llm_es.store import keyring, sealing
from llm_es.store.keyring import KeyRing


@pytest.fixture
def opens(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every text the key ring opens with AES-GCM, in order."""
    opened: list[str] = []

    def counting_open(key: bytes, text: str) -> str:
        opened.append(text)
        return sealing.open_sealed(key, text)

    monkeypatch.setattr(keyring, "open_sealed", counting_open)
    return opened


async def test_a_text_sealed_here_comes_back_opened_without_aes(
    client: NATS, opens: list[str]
) -> None:
    """A turn's words, sealed on their way into the log, are in the next prompt of their
    channel: the views hand them back sealed, and the key ring answers from memory."""
    ring = KeyRing(client.jetstream())
    sealed = await ring.seal_text("user.alice", "my door code is 4711")
    assert "4711" not in sealed
    await ring.fetch_keys([sealed])
    assert ring.open_cached(sealed) == "my door code is 4711"
    assert await ring.open_text(sealed) == "my door code is 4711"
    assert opens == []


async def test_a_text_sealed_here_is_erased_with_its_key(client: NATS, opens: list[str]) -> None:
    """Destroying the key forgets what was sealed under it here too: the text reads as
    erased from then on, on this instance as on a fresh one."""
    ring = KeyRing(client.jetstream())
    sealed = await ring.seal_text("user.bob", "call me at 555-0100")
    await ring.destroy("user.bob")
    assert ring.open_cached(sealed) is None  # its key is not known here any more
    assert await ring.open_text(sealed) == ERASED
    assert await KeyRing(client.jetstream()).open_text(sealed) == ERASED
    assert opens == []  # there was no key left to try
