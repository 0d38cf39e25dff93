"""The cryptographic primitives WireGuard is built from (whitepaper §5.4), on C implementations.

BLAKE2s and its HMAC come from hashlib, X25519 and ChaCha20-Poly1305 from `cryptography`, and
XChaCha20-Poly1305 (cookie replies only) from libsodium via PyNaCl. Nothing here is hand-rolled.
"""

from __future__ import annotations

import hashlib
import hmac as _hmac
import struct
import time

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from nacl.bindings import (
    crypto_aead_xchacha20poly1305_ietf_decrypt,
    crypto_aead_xchacha20poly1305_ietf_encrypt,
)
from nacl.exceptions import CryptoError

KEY_LEN = 32
TAG_LEN = 16
ZERO_NONCE = bytes(12)


class AuthenticationError(Exception):
    """A ciphertext or MAC did not verify: the packet is forged, corrupted, or for another key."""


def hash_(*parts: bytes) -> bytes:
    """HASH(a || b || ...) = BLAKE2s-256."""
    h = hashlib.blake2s()
    for part in parts:
        h.update(part)
    return h.digest()


def mac(key: bytes, data: bytes) -> bytes:
    """MAC(key, data) = keyed BLAKE2s with a 16-byte digest (mac1, mac2 and cookies)."""
    return hashlib.blake2s(data, key=key, digest_size=16).digest()


def hmac(key: bytes, data: bytes) -> bytes:
    return _hmac.digest(key, data, hashlib.blake2s)


def kdf(chaining_key: bytes, data: bytes, n: int) -> list[bytes]:
    """HKDF over HMAC-BLAKE2s returning `n` (1..3) 32-byte outputs."""
    prk = hmac(chaining_key, data)
    out, prev = [], b""
    for i in range(1, n + 1):
        prev = hmac(prk, prev + bytes((i,)))
        out.append(prev)
    return out


def dh(private: X25519PrivateKey, public: bytes) -> bytes:
    """X25519 shared secret; an all-zero result (a low-order point) is rejected, as wireguard-go does."""
    try:
        shared = private.exchange(X25519PublicKey.from_public_bytes(public))
    except ValueError as exc:
        raise AuthenticationError("invalid public key") from exc
    if not any(shared):
        raise AuthenticationError("low-order public key")
    return shared


def generate_private_key() -> X25519PrivateKey:
    return X25519PrivateKey.generate()


def private_from_bytes(raw: bytes) -> X25519PrivateKey:
    return X25519PrivateKey.from_private_bytes(raw)


def private_bytes(key: X25519PrivateKey) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                             serialization.NoEncryption())


def public_bytes(key: X25519PrivateKey) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def aead_encrypt(key: bytes, counter: int, plaintext: bytes, aad: bytes) -> bytes:
    return ChaCha20Poly1305(key).encrypt(nonce(counter), plaintext, aad)


def aead_decrypt(key: bytes, counter: int, ciphertext: bytes, aad: bytes) -> bytes:
    try:
        return ChaCha20Poly1305(key).decrypt(nonce(counter), ciphertext, aad)
    except Exception as exc:  # cryptography raises InvalidTag
        raise AuthenticationError("AEAD tag mismatch") from exc


def xaead_encrypt(key: bytes, nonce24: bytes, plaintext: bytes, aad: bytes) -> bytes:
    return crypto_aead_xchacha20poly1305_ietf_encrypt(plaintext, aad, nonce24, key)


def xaead_decrypt(key: bytes, nonce24: bytes, ciphertext: bytes, aad: bytes) -> bytes:
    try:
        return crypto_aead_xchacha20poly1305_ietf_decrypt(ciphertext, aad, nonce24, key)
    except CryptoError as exc:
        raise AuthenticationError("XAEAD tag mismatch") from exc


# nonce(counter): ChaCha20-Poly1305's nonce, 32 zero bits then the 64-bit little-endian counter. The struct's
# own method, not a function around it: it runs for every packet both ways.
nonce = struct.Struct("<4xQ").pack


_TAI64_BASE = (1 << 62) + 10  # TAI64 label of the epoch, with TAI's 10 s offset, as wireguard-go uses
_WHITENER = 0x1000000  # round nanoseconds down to ~16 ms so the timestamp leaks no fine timing


def tai64n(unix_time: float | None = None) -> bytes:
    """A 12-byte TAI64N timestamp; comparing two as bytes orders them in time."""
    t = time.time() if unix_time is None else unix_time
    seconds = int(t)
    nanos = int((t - seconds) * 1e9) & ~(_WHITENER - 1)
    return struct.pack(">QI", _TAI64_BASE + seconds, nanos)
