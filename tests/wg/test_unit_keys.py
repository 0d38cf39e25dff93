"""Key encoding, Curve25519 public keys and TAI64N timestamps, against published values."""

from __future__ import annotations

import base64

import pytest

from kakuremichi.wg import keys, primitives
from tests.wg.sansio_helpers import tai64n


def test_public_key_matches_rfc_7748_test_vector():
    alice_private = bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
    alice_public = bytes.fromhex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
    assert keys.public_from_private(alice_private) == alice_public


def test_generated_private_keys_are_clamped_and_distinct():
    generated = {keys.generate_private() for _ in range(20)}
    assert len(generated) == 20
    for raw in generated:
        assert raw[0] & 7 == 0 and raw[31] & 0x80 == 0 and raw[31] & 0x40
    assert len(keys.generate_preshared()) == 32


def test_base64_round_trip_and_errors():
    raw = bytes(range(32))
    text = keys.encode(raw)
    assert len(text) == 44 and keys.decode(text) == raw and keys.decode(f"  {text}\n") == raw
    with pytest.raises(keys.InvalidKey, match="base64"):
        keys.decode("not a key!")
    with pytest.raises(keys.InvalidKey, match="31 bytes"):
        keys.decode(base64.b64encode(bytes(31)).decode())
    with pytest.raises(ValueError):  # InvalidKey is a ValueError: callers can catch either
        keys.decode(base64.b64encode(bytes(33)).decode(), "PublicKey")


@pytest.mark.parametrize("t", [0.0, 1_700_000_000.0, 1_700_000_000.123456789, 2_000_000_000.999])
def test_tai64n_layout(t):
    assert primitives.tai64n(t) == tai64n(t)
    assert len(primitives.tai64n(t)) == 12


def test_tai64n_orders_as_bytes_and_hides_fine_timing():
    base = 1_700_000_000.0
    stamps = [primitives.tai64n(base + i * 0.02) for i in range(200)]
    assert stamps == sorted(stamps) and len(set(stamps)) == 200  # 20 ms apart: always distinct, increasing
    assert primitives.tai64n(base + 0.001) == primitives.tai64n(base + 0.002)  # within one ~16.8 ms bucket


def test_low_order_public_keys_are_refused():
    private = primitives.private_from_bytes(bytes([9] * 32))
    with pytest.raises(primitives.AuthenticationError):
        primitives.dh(private, bytes(32))
