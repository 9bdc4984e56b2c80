"""Sealed text: a string encrypted with AES-256-GCM under a named key, readable as a string.

A sealed value is `sealed:1:<key name>:<base64url(nonce || ciphertext || tag)>`, so an
event field typed `str` stays a `str` and the event's schema is unchanged. The key
name is also the associated data: a value moved under another key's name fails to
open. `cryptography`'s AESGCM (pyca, OpenSSL underneath) does the work; a fresh
96-bit random nonce per value, as NIST SP 800-38D allows for up to 2**32 values a key.
"""

from __future__ import annotations

import base64
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

SEALED_PREFIX = "sealed:1:"
KEY_BYTES = 32
_NONCE_BYTES = 12

__all__ = [
    "KEY_BYTES",
    "SEALED_PREFIX",
    "SealBroken",
    "new_key",
    "open_sealed",
    "seal",
    "sealed_key",
]


class SealBroken(ValueError):
    """Sealed text that this key cannot open (another key of the same name, or damaged)."""


def new_key() -> bytes:
    """A fresh random AES-256 key."""
    return AESGCM.generate_key(bit_length=KEY_BYTES * 8)


def seal(key: bytes, key_name: str, text: str) -> str:
    """`text` sealed under `key` (stored as `key_name`)."""
    nonce = os.urandom(_NONCE_BYTES)
    box = AESGCM(key).encrypt(nonce, text.encode(), key_name.encode())
    return f"{SEALED_PREFIX}{key_name}:{base64.urlsafe_b64encode(nonce + box).decode()}"


def sealed_key(text: str) -> str | None:
    """The key name a sealed value names; None when `text` is not sealed (stored as it is)."""
    if not text.startswith(SEALED_PREFIX):
        return None
    name, colon, _ = text[len(SEALED_PREFIX) :].partition(":")
    return name if colon and name else None


def open_sealed(key: bytes, text: str) -> str:
    """The plain text of a sealed value; SealBroken when `key` does not open it."""
    name, _, body = text[len(SEALED_PREFIX) :].partition(":")
    try:
        raw = base64.urlsafe_b64decode(body)
        plain = AESGCM(key).decrypt(raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], name.encode())
        return plain.decode()
    except (InvalidTag, ValueError) as exc:
        raise SealBroken(f"cannot open text sealed by {name}") from exc
