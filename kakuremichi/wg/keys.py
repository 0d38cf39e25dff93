"""WireGuard keys in their standard base64 text form, as `wg genkey`, `wg pubkey` and `wg genpsk` use."""

from __future__ import annotations

import base64
import binascii
import os

from kakuremichi.wg import primitives


class InvalidKey(ValueError):
    """A key string is not 32 bytes of standard base64."""


def decode(text: str, what: str = "key") -> bytes:
    """Decode a base64 WireGuard key, with an error that names what was wrong."""
    text = text.strip()
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidKey(f"{what} is not valid base64: expected 44 characters like the output of `wg genkey`")
    if len(raw) != 32:
        raise InvalidKey(f"{what} decodes to {len(raw)} bytes; WireGuard keys are 32 bytes (44 base64 characters)")
    return raw


def encode(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def generate_private() -> bytes:
    """A new Curve25519 private key, clamped as `wg genkey` prints it."""
    raw = bytearray(os.urandom(32))
    raw[0] &= 248
    raw[31] = (raw[31] & 127) | 64
    return bytes(raw)


def public_from_private(private: bytes) -> bytes:
    return primitives.public_bytes(primitives.private_from_bytes(private))


def generate_preshared() -> bytes:
    return os.urandom(32)
