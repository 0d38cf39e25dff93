"""The Noise_IKpsk2 handshake as WireGuard specifies it (whitepaper §5.4.2–5.4.4).

Pure functions over explicit state: each side's intermediate (chaining key, hash, ephemeral) is a small
object the peer keeps between messages. Message bytes come back without mac1/mac2 filled in; the cookie
module adds those, because they depend on the receiver and on cookie state, not on Noise.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from kakuremichi.wg import messages
from kakuremichi.wg.primitives import (
    aead_decrypt,
    aead_encrypt,
    dh,
    generate_private_key,
    hash_,
    kdf,
    public_bytes,
)

CONSTRUCTION = b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s"
IDENTIFIER = b"WireGuard v1 zx2c4 Jason@zx2c4.com"
INITIAL_CHAINING_KEY = hash_(CONSTRUCTION)
INITIAL_HASH = hash_(INITIAL_CHAINING_KEY, IDENTIFIER)
NO_PRESHARED_KEY = bytes(32)


@dataclass(slots=True)
class StaticIdentity:
    """This device's long-term key pair."""

    private: X25519PrivateKey
    public: bytes

    @classmethod
    def from_private(cls, private: X25519PrivateKey) -> "StaticIdentity":
        return cls(private, public_bytes(private))


@dataclass(slots=True)
class HandshakeState:
    """What one side remembers between the two handshake messages."""

    chaining_key: bytes
    hash: bytes
    local_index: int
    ephemeral: X25519PrivateKey | None = None  # ours
    remote_ephemeral: bytes = b""
    remote_index: int = 0


@dataclass(slots=True)
class ConsumedInitiation:
    """A verified initiation, not yet accepted: the device still checks peer, replay and flood rules."""

    remote_static: bytes
    timestamp: bytes
    state: HandshakeState


@dataclass(slots=True)
class SessionKeys:
    send: bytes
    receive: bytes


def create_initiation(local: StaticIdentity, remote_static: bytes, static_static: bytes,
                      local_index: int, timestamp: bytes) -> tuple[bytearray, HandshakeState]:
    """Build a handshake initiation (§5.4.2); `static_static` is the precomputed DH(S_i, S_r)."""
    h = hash_(INITIAL_HASH, remote_static)
    ck = INITIAL_CHAINING_KEY
    ephemeral = generate_private_key()
    e_pub = public_bytes(ephemeral)
    (ck,) = kdf(ck, e_pub, 1)
    h = hash_(h, e_pub)
    ck, key = kdf(ck, dh(ephemeral, remote_static), 2)
    static_enc = aead_encrypt(key, 0, local.public, h)
    h = hash_(h, static_enc)
    ck, key = kdf(ck, static_static, 2)
    timestamp_enc = aead_encrypt(key, 0, timestamp, h)
    h = hash_(h, timestamp_enc)
    msg = bytearray(messages.INITIATION_SIZE)
    messages.INITIATION.pack_into(msg, 0, messages.MESSAGE_INITIATION, local_index, e_pub, static_enc,
                                  timestamp_enc)
    return msg, HandshakeState(ck, h, local_index, ephemeral)


def consume_initiation(local: StaticIdentity, msg: bytes) -> ConsumedInitiation:
    """Decrypt and verify an initiation addressed to `local`; raises AuthenticationError if forged."""
    _, sender, e_pub, static_enc, timestamp_enc = messages.INITIATION.unpack_from(msg)
    h = hash_(INITIAL_HASH, local.public)
    ck = INITIAL_CHAINING_KEY
    (ck,) = kdf(ck, e_pub, 1)
    h = hash_(h, e_pub)
    ck, key = kdf(ck, dh(local.private, e_pub), 2)
    remote_static = aead_decrypt(key, 0, static_enc, h)
    h = hash_(h, static_enc)
    ck, key = kdf(ck, dh(local.private, remote_static), 2)
    timestamp = aead_decrypt(key, 0, timestamp_enc, h)
    h = hash_(h, timestamp_enc)
    return ConsumedInitiation(remote_static, timestamp,
                              HandshakeState(ck, h, 0, None, e_pub, sender))


def create_response(state: HandshakeState, remote_static: bytes, preshared_key: bytes,
                    local_index: int) -> tuple[bytearray, SessionKeys]:
    """Answer a consumed initiation (§5.4.3) and derive the responder's transport keys."""
    ephemeral = generate_private_key()
    e_pub = public_bytes(ephemeral)
    (ck,) = kdf(state.chaining_key, e_pub, 1)
    h = hash_(state.hash, e_pub)
    (ck,) = kdf(ck, dh(ephemeral, state.remote_ephemeral), 1)
    (ck,) = kdf(ck, dh(ephemeral, remote_static), 1)
    ck, tau, key = kdf(ck, preshared_key, 3)
    h = hash_(h, tau)
    empty_enc = aead_encrypt(key, 0, b"", h)
    msg = bytearray(messages.RESPONSE_SIZE)
    messages.RESPONSE.pack_into(msg, 0, messages.MESSAGE_RESPONSE, local_index, state.remote_index, e_pub,
                                empty_enc)
    receive, send = kdf(ck, b"", 2)
    return msg, SessionKeys(send=send, receive=receive)


def consume_response(state: HandshakeState, local: StaticIdentity, preshared_key: bytes,
                     msg: bytes) -> tuple[int, SessionKeys]:
    """Verify a response to our initiation; returns the responder's index and our transport keys."""
    _, sender, _receiver, e_pub, empty_enc = messages.RESPONSE.unpack_from(msg)
    (ck,) = kdf(state.chaining_key, e_pub, 1)
    h = hash_(state.hash, e_pub)
    assert state.ephemeral is not None
    (ck,) = kdf(ck, dh(state.ephemeral, e_pub), 1)
    (ck,) = kdf(ck, dh(local.private, e_pub), 1)
    ck, tau, key = kdf(ck, preshared_key, 3)
    h = hash_(h, tau)
    aead_decrypt(key, 0, empty_enc, h)
    send, receive = kdf(ck, b"", 2)
    return sender, SessionKeys(send=send, receive=receive)
