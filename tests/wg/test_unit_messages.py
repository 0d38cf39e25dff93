"""Every message type's layout, and bad input of every kind: silently dropped, counted, never a crash."""

from __future__ import annotations

import random
import struct

import pytest

from tests.wg.sansio_helpers import (
    A_ADDR,
    B_ADDR,
    COOKIE_REPLY,
    INITIATION,
    RESPONSE,
    TRANSPORT,
    bit_flips,
    craft_initiation,
    established_pair,
    make_pair,
    stamp,
    tai64n,
    total_dropped,
    transport_header,
)

STRANGER = ("203.0.113.66", 4444)


def _state(device, peer):
    return (peer.current, peer.previous, peer.next, peer.handshake, peer.endpoint, dict(device._index))


def assert_dropped(device, data, reason, source=STRANGER):
    """Feed one datagram; it must change nothing but one drop counter."""
    peer = next(iter(device.peers.values()))
    before, total = _state(device, peer), total_dropped(device)
    count = device.dropped[reason]
    device.receive_datagram(data, source)
    assert device.dropped[reason] == count + 1, dict(device.dropped)
    assert total_dropped(device) == total + 1
    assert device.outgoing == [] and device.incoming == []
    assert _state(device, peer) == before


@pytest.fixture
def established():
    return established_pair()


def test_initiation_layout_and_size():
    pair = make_pair()
    pair.a.send_packet(pair.a_to_b())
    ((msg, _),) = pair.a.outgoing
    assert len(msg) == 148
    type_, sender, ephemeral, static, timestamp, mac1, mac2 = struct.unpack("<II32s48s28s16s16s", msg)
    assert type_ == INITIATION and sender == pair.a_peer.handshake.local_index
    assert len(set(ephemeral)) > 1 and mac1 != bytes(16) and mac2 == bytes(16)


def test_response_layout_and_size():
    pair = make_pair()
    pair.a.send_packet(pair.a_to_b())
    pair.net.flush()
    (response,) = pair.net.sent(pair.b, RESPONSE)
    assert len(response.data) == 92
    type_, sender, receiver, ephemeral, empty, mac1, mac2 = struct.unpack("<III32s16s16s16s", response.data)
    assert type_ == RESPONSE
    initiation = pair.net.sent(pair.a, INITIATION)[0].data
    assert receiver == struct.unpack_from("<I", initiation, 4)[0]
    assert sender == pair.b_peer.current.local_index and mac2 == bytes(16)


def test_cookie_reply_layout_and_size():
    pair = make_pair(b_kwargs={"handshakes_per_second_under_load": 0})
    pair.a.send_packet(pair.a_to_b())
    pair.net.flush()
    (reply,) = pair.net.sent(pair.b, COOKIE_REPLY)
    assert len(reply.data) == 64
    type_, receiver, nonce, cookie = struct.unpack("<II24s32s", reply.data)
    initiation = pair.net.sent(pair.a, INITIATION)[0].data
    assert type_ == COOKIE_REPLY and receiver == struct.unpack_from("<I", initiation, 4)[0]
    assert len(set(nonce)) > 1


def test_transport_and_keepalive_layout(established):
    pair = established
    pair.a.send_packet(pair.a_to_b(b"x" * 10))
    pair.net.advance(10)  # B's passive keepalive
    (data,) = pair.net.sent(pair.a, TRANSPORT)
    (keepalive,) = pair.net.sent(pair.b, TRANSPORT)
    assert len(keepalive.data) == 32  # header + tag around nothing
    assert data.data[:4] == b"\x04\x00\x00\x00" and len(data.data) >= 32
    assert transport_header(data.data) == (pair.b_peer.current.local_index, 1)  # counter 0 went first
    assert transport_header(keepalive.data)[0] == pair.a_peer.current.local_index


def test_nonzero_reserved_bytes_are_rejected():
    """The type is a 32-bit field: a message whose three reserved bytes are not zero is not a message."""
    pair = make_pair()
    pair.net.drop = lambda d: True  # hold everything; deliver by hand
    pair.a.send_packet(pair.a_to_b(b"payload"))
    pair.net.flush()
    steps = [(INITIATION, pair.a, pair.b, A_ADDR), (RESPONSE, pair.b, pair.a, B_ADDR),
             (TRANSPORT, pair.a, pair.b, A_ADDR)]
    for kind, sender, receiver, source in steps:
        genuine = pair.net.sent(sender, kind)[0]
        for reserved in (1, 2, 3):
            bad = bytearray(genuine.data)
            bad[reserved] = 0x80
            if kind != TRANSPORT:
                bad = stamp(bad, receiver.public_key)  # a valid mac1: only the reserved byte is wrong
            assert_dropped(receiver, bytes(bad), "malformed", source)
        pair.net.deliver(genuine)  # the untouched message is accepted and moves the handshake on
        pair.net.flush()
    assert [bytes(p) for p in pair.b.incoming] == [pair.a_to_b(b"payload")]


@pytest.mark.parametrize("kind,size", [(INITIATION, 148), (RESPONSE, 92), (COOKIE_REPLY, 64)])
def test_handshake_messages_of_the_wrong_size_are_malformed(established, kind, size):
    for length in (size - 1, size + 1, 4, 1500):
        data = struct.pack("<I", kind) + bytes(length - 4)
        assert_dropped(established.b, data, "malformed")


def test_short_and_unknown_datagrams_are_malformed(established):
    for data in (b"", b"\x04", b"\x04\x00\x00", struct.pack("<IIQ", TRANSPORT, 1, 0) + bytes(15),
                 struct.pack("<I", 0) + bytes(60), struct.pack("<I", 5) + bytes(60), b"\xff" * 148):
        assert_dropped(established.b, data, "malformed")


def test_every_input_buffer_type_is_accepted(established):
    pair = established
    pair.a.send_packet(pair.a_to_b(b"one"))
    pair.a.send_packet(pair.a_to_b(b"two"))
    pair.a.send_packet(pair.a_to_b(b"three"))
    datagrams = [d for d, _ in pair.a.outgoing]
    pair.a.outgoing.clear()
    for data, wrap in zip(datagrams, (bytes, bytearray, memoryview)):
        pair.b.receive_datagram(wrap(bytes(data)), A_ADDR)
    assert [bytes(p) for p in pair.b.incoming] == [pair.a_to_b(b"one"), pair.a_to_b(b"two"),
                                                   pair.a_to_b(b"three")]


def test_forged_mac1_is_dropped_before_any_crypto():
    pair = make_pair()
    pair.a.send_packet(pair.a_to_b())
    ((initiation, _),) = pair.a.outgoing
    bad = bytearray(initiation)
    bad[120] ^= 1
    assert_dropped(pair.b, bytes(bad), "mac1", A_ADDR)
    pair.b.receive_datagram(bytes(initiation), A_ADDR)
    assert len(pair.b.outgoing) == 1  # the genuine one is answered


def test_forged_transport_is_dropped_and_does_not_burn_its_counter(established):
    pair = established
    pair.a.send_packet(pair.a_to_b(b"genuine"))
    ((data, _),) = pair.a.outgoing
    pair.a.outgoing.clear()
    forged = bytearray(data)
    forged[20] ^= 0x40
    assert_dropped(pair.b, bytes(forged), "auth", A_ADDR)
    pair.b.receive_datagram(bytes(data), A_ADDR)  # same counter, real packet: still accepted
    assert [bytes(p) for p in pair.b.incoming] == [pair.a_to_b(b"genuine")]


def test_unknown_receiver_index_is_dropped(established):
    pair = established
    unused = next(i for i in range(1, 1 << 32) if i not in pair.b._index)
    assert_dropped(pair.b, struct.pack("<IIQ", TRANSPORT, unused, 0) + bytes(32), "unknown_index")
    response = stamp(struct.pack("<III", RESPONSE, 7, unused) + bytes(80), pair.b.public_key)
    assert_dropped(pair.b, response, "unknown_index")
    assert_dropped(pair.b, struct.pack("<II", COOKIE_REPLY, unused) + bytes(56), "unknown_index")


def test_transport_addressed_to_a_pending_handshake_index_is_dropped():
    pair = make_pair()
    pair.a.send_packet(pair.a_to_b())
    pair.a.outgoing.clear()
    index = pair.a_peer.handshake.local_index
    assert_dropped(pair.a, struct.pack("<IIQ", TRANSPORT, index, 0) + bytes(32), "unknown_index")


LOW_ORDER_POINTS = [bytes(32), (1).to_bytes(32, "little"),
                    bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800")]


@pytest.mark.parametrize("low_order", LOW_ORDER_POINTS, ids=["zero", "one", "order-8"])
def test_low_order_ephemeral_keys_are_rejected(low_order):
    pair = make_pair()
    initiation = bytearray(craft_initiation(bytes(31) + b"\x40", pair.b.public_key, tai64n(1), 1).message)
    initiation[8:40] = low_order
    assert_dropped(pair.b, stamp(initiation, pair.b.public_key), "auth", A_ADDR)
    pair.a.send_packet(pair.a_to_b())
    index = pair.a_peer.handshake.local_index
    pair.a.outgoing.clear()
    response = stamp(struct.pack("<III", RESPONSE, 9, index) + low_order + bytes(16 + 32), pair.a.public_key)
    assert_dropped(pair.a, response, "auth", B_ADDR)


def test_random_datagrams_never_crash_and_are_all_counted(established):
    """Fuzz: random bytes, with types, sizes, indices and even valid mac1s chosen to reach deep code."""
    pair = established
    rng = random.Random(20240601)
    indices = list(pair.b._index) + [rng.getrandbits(32) for _ in range(3)]
    before = total_dropped(pair.b)
    n = 3000
    for i in range(n):
        kind = rng.choice([INITIATION, RESPONSE, COOKIE_REPLY, TRANSPORT, rng.getrandbits(32), rng.randrange(256)])
        size = rng.choice({INITIATION: [148], RESPONSE: [92], COOKIE_REPLY: [64]}.get(kind, [])
                          + [rng.randrange(0, 200), 32, 48])
        body = bytearray(rng.randbytes(size))
        if size >= 4:
            body[:4] = (kind & 0xFFFFFFFF).to_bytes(4, "little")
        if size >= 12 and rng.random() < 0.7:
            where = 4 if kind in (COOKIE_REPLY, TRANSPORT) else 8
            body[where:where + 4] = rng.choice(indices).to_bytes(4, "little")
        if kind in (INITIATION, RESPONSE) and size in (148, 92) and rng.random() < 0.5:
            body = bytearray(stamp(body, pair.b.public_key))
        pair.b.receive_datagram(bytes(body), (f"198.18.{i % 256}.{i // 256 % 256}", 1000 + i))
        pair.clock.advance(0.01)  # stay below the under-load threshold: no cookie replies here
    assert total_dropped(pair.b) == before + n
    assert pair.b.incoming == [] and pair.b.outgoing == []
    # and the real tunnel still works
    pair.a.send_packet(pair.a_to_b(b"still alive"))
    pair.net.flush()
    assert [bytes(p) for p in pair.b.incoming] == [pair.a_to_b(b"still alive")]


def test_every_bit_flip_of_every_real_message_is_dropped():
    pair = make_pair()
    pair.net.drop = lambda d: True  # hold everything; deliver by hand
    pair.a.send_packet(pair.a_to_b(b"payload"))
    pair.net.flush()
    initiation = pair.net.sent(pair.a, INITIATION)[0]

    # flips of an initiation before the genuine one arrives (mac2 excluded: it is only checked under load)
    for variant in bit_flips(initiation.data, 0, 132):
        pair.b.receive_datagram(variant, A_ADDR)
    assert pair.b.outgoing == [] and pair.b_peer.next is None
    assert total_dropped(pair.b) == 132 * 8
    pair.net.deliver(initiation)
    pair.net.flush()
    response = pair.net.sent(pair.b, RESPONSE)[0]

    # flips of the response while the handshake is pending: none may complete or spoil it
    for variant in bit_flips(response.data, 0, 76):
        pair.a.receive_datagram(variant, B_ADDR)
    assert pair.a_peer.current is None and pair.a.outgoing == []
    assert total_dropped(pair.a) == 76 * 8
    pair.net.deliver(response)
    pair.net.flush()
    assert pair.a_peer.current is not None
    transport = pair.net.sent(pair.a, TRANSPORT)[0]

    # flips of a transport message (anywhere: it has no unauthenticated part that matters)
    for variant in bit_flips(transport.data):
        pair.b.receive_datagram(variant, A_ADDR)
    assert pair.b.incoming == [] and pair.b_peer.current is None  # not even key confirmation
    pair.net.deliver(transport)
    assert [bytes(p) for p in pair.b.incoming] == [pair.a_to_b(b"payload")]

    # flips of the consumed initiation, mac2 included: replays or forgeries, all dropped
    dropped = total_dropped(pair.b)
    for variant in bit_flips(initiation.data):
        pair.b.receive_datagram(variant, A_ADDR)
    assert total_dropped(pair.b) == dropped + 148 * 8
    assert pair.b.outgoing == []
