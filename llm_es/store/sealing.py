"""Sealing text: AES-256-GCM under a named key, in the string form of
`llm_es.domain.personal_data` (`sealed:1:<key name>:<length>:<box>`).

`box` is base64url(nonce || ciphertext || tag): a fresh random 96-bit nonce per
value, as NIST SP 800-38D allows for up to 2**32 values under one key. The key
name is the associated data, so a value moved under another key's name fails to
open. `cryptography`'s AESGCM (pyca, OpenSSL underneath) does the work.
"""

from __future__ import annotations

import base64
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from llm_es.domain.personal_data import sealed_parts, sealed_value

KEY_BYTES = 32
_NONCE_BYTES = 12


class SealBroken(ValueError):
    """Sealed text that this key cannot open (another key of the same name, or damaged)."""


def new_key() -> bytes:
    """A fresh random AES-256 key."""
    return AESGCM.generate_key(bit_length=KEY_BYTES * 8)


def sealed_key(text: str) -> str | None:
    """The key name a sealed value names; None when `text` is not sealed (stored as it is)."""
    parts = sealed_parts(text)
    return None if parts is None else parts[0]


def seal(key: bytes, key_name: str, text: str) -> str:
    """`text` sealed under `key` (stored as `key_name`)."""
    nonce = os.urandom(_NONCE_BYTES)
    box = AESGCM(key).encrypt(nonce, text.encode(), key_name.encode())
    return sealed_value(key_name, len(text), base64.urlsafe_b64encode(nonce + box).decode())


def open_sealed(key: bytes, text: str) -> str:
    """The plain text of a sealed value; SealBroken when `key` does not open it."""
    parts = sealed_parts(text)
    if parts is None:
        raise SealBroken("not a sealed value")
    name, _, body = parts
    try:
        raw = base64.urlsafe_b64decode(body)
        plain = AESGCM(key).decrypt(raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], name.encode())
        return plain.decode()
    except (InvalidTag, ValueError) as exc:
        raise SealBroken(f"cannot open text sealed by {name}") from exc
