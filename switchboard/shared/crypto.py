"""Authenticated encryption of opaque blobs handed to clients (reasoning, compactions): they cannot be read
or forged, and a blob made for one purpose is refused for another."""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from switchboard.shared.errors import invalid

log = logging.getLogger(__name__)
_VERSION = b"\x01"


def key_id(token: str) -> str:
    """A stable, non-secret owner id for an API key."""
    return "key_" + hashlib.sha256(token.encode()).hexdigest()[:24]


class Sealer:
    def __init__(self, key: bytes | None) -> None:
        if key is None:
            log.warning("no encryption key is configured: encrypted content will not survive a restart "
                        "and is not shared between replicas (set SWITCHBOARD_ENCRYPTION_KEY)")
            key = AESGCM.generate_key(bit_length=256)
        if len(key) != 32:
            raise ValueError("the encryption key must be 32 bytes (base64-encoded in config)")
        self._aead = AESGCM(key)

    def seal(self, data: bytes, purpose: str) -> str:
        nonce = os.urandom(12)
        sealed = self._aead.encrypt(nonce, data, _VERSION + purpose.encode())
        return base64.urlsafe_b64encode(_VERSION + nonce + sealed).decode()

    def open(self, token: str, purpose: str, param: str) -> bytes:
        try:
            raw = base64.urlsafe_b64decode(token.encode())
            if raw[:1] != _VERSION or len(raw) < 29:
                raise ValueError("bad version or length")
            return self._aead.decrypt(raw[1:13], raw[13:], _VERSION + purpose.encode())
        except (InvalidTag, ValueError, binascii.Error):
            raise invalid("The encrypted content could not be verified: it was not produced by this gateway "
                          "or was altered.", param, code="invalid_encrypted_content") from None


def parse_key(text: str | None) -> bytes | None:
    if not text:
        return None
    try:
        return base64.b64decode(text, validate=True)
    except binascii.Error:
        raise ValueError("the encryption key must be base64") from None
