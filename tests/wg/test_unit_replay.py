"""Anti-replay: the transport counter window, and initiation timestamps and flood limits."""

from __future__ import annotations

import random

import pytest

from kakuremichi.wg.constants import REJECT_AFTER_MESSAGES
from kakuremichi.wg.replay import WINDOW_SIZE, ReplayWindow
from tests.wg.sansio_helpers import (
    A_ADDR,
    RESPONSE,
    aead_seal,
    craft_initiation,
    established_pair,
    make_pair,
    tai64n,
    transport_header,
)

LIMIT = REJECT_AFTER_MESSAGES


def accept(window: ReplayWindow, counter: int) -> bool:
    """What the device does: check before decrypting, record after."""
    return window.check(counter, LIMIT) and window.update(counter)


# ---------------------------------------------------------------------------------------------- the window

def test_window_is_2048_wide():
    assert WINDOW_SIZE == 2048


def test_fresh_window_accepts_zero_once():
    w = ReplayWindow()
    assert accept(w, 0)
    assert not accept(w, 0)


def test_duplicates_rejected_in_any_order():
    w = ReplayWindow()
    order = list(range(500))
    random.Random(3).shuffle(order)
    assert all(accept(w, c) for c in order)
    assert not any(accept(w, c) for c in range(500))


def test_out_of_order_within_the_window_is_accepted_and_older_is_rejected():
    w = ReplayWindow()
    assert accept(w, 10_000)
    assert accept(w, 10_000 - (WINDOW_SIZE - 1))  # the oldest counter still in the window
    assert not accept(w, 10_000 - WINDOW_SIZE)  # one older: out of the window
    assert not accept(w, 0)
    assert accept(w, 9_999) and accept(w, 10_001)
    assert not accept(w, 10_001 - WINDOW_SIZE)  # the window slid with the new highest


def test_a_big_jump_forgets_the_old_window_entirely():
    w = ReplayWindow()
    for c in range(100):
        accept(w, c)
    assert accept(w, 100 + 5 * WINDOW_SIZE)
    assert not accept(w, 99)
    assert accept(w, 100 + 5 * WINDOW_SIZE - 1)


def test_sliding_keeps_bits_for_counters_still_inside():
    w = ReplayWindow()
    assert accept(w, 5)
    assert accept(w, 1000)  # slides by 995: 5 is still inside
    assert not accept(w, 5)
    assert accept(w, 6)
    assert accept(w, 5 + WINDOW_SIZE)  # 5 is now just outside the window, 6 the oldest inside
    assert not accept(w, 6) and not accept(w, 5)


def test_counters_at_or_beyond_reject_after_messages_are_rejected():
    w = ReplayWindow()
    assert accept(w, LIMIT - 1)
    assert not w.check(LIMIT, LIMIT)
    assert not w.check(LIMIT + 1, LIMIT)
    assert not w.check((1 << 64) - 1, LIMIT)


def test_check_has_no_side_effect_and_update_catches_a_race():
    w = ReplayWindow()
    assert w.check(7, LIMIT) and w.check(7, LIMIT)
    assert w.update(7)
    assert not w.update(7)  # e.g. the same counter decrypted twice concurrently
    assert w.check(8, LIMIT)
    w.update(8 + WINDOW_SIZE)
    assert not w.update(8)  # fell out of the window between check and update


# ---------------------------------------------------------------------------------------------- the device

@pytest.fixture
def pair():
    return established_pair()


def _sent_by_a(pair, payloads):
    """Encrypt packets on A and take the datagrams instead of delivering them."""
    out = []
    for payload in payloads:
        pair.a.send_packet(pair.a_to_b(payload))
        ((data, _),) = pair.a.outgoing
        pair.a.outgoing.clear()
        out.append(bytes(data))
    return out


def test_replayed_transport_datagram_is_dropped(pair):
    (data,) = _sent_by_a(pair, [b"once"])
    pair.b.receive_datagram(data, A_ADDR)
    pair.b.receive_datagram(data, A_ADDR)
    pair.b.receive_datagram(data, ("203.0.113.1", 9))
    assert [bytes(p) for p in pair.b.incoming] == [pair.a_to_b(b"once")]
    assert pair.b.dropped["replay"] == 2
    assert pair.b_peer.endpoint == A_ADDR  # a replay from elsewhere does not move the endpoint


def test_reordered_transport_within_the_window_is_delivered(pair):
    datagrams = _sent_by_a(pair, [i.to_bytes(2, "big") for i in range(WINDOW_SIZE + 50)])
    newest = datagrams[-1]
    pair.b.receive_datagram(newest, A_ADDR)
    newest_counter = transport_header(newest)[1]
    by_counter = {transport_header(d)[1]: d for d in datagrams}
    pair.b.incoming.clear()
    pair.b.receive_datagram(by_counter[newest_counter - (WINDOW_SIZE - 1)], A_ADDR)
    pair.b.receive_datagram(by_counter[newest_counter - 1], A_ADDR)
    pair.b.receive_datagram(by_counter[newest_counter - 1000], A_ADDR)
    assert len(pair.b.incoming) == 3
    pair.b.receive_datagram(by_counter[newest_counter - WINDOW_SIZE], A_ADDR)
    pair.b.receive_datagram(by_counter[newest_counter - WINDOW_SIZE - 30], A_ADDR)
    assert len(pair.b.incoming) == 3
    assert pair.b.dropped["replay"] == 2


def test_counter_at_reject_after_messages_is_dropped_by_the_receiver(pair):
    session = pair.a_peer.current
    packet = pair.a_to_b(b"late")
    padded = packet + bytes(-len(packet) % 16)
    for counter in (LIMIT - 1, LIMIT, (1 << 64) - 1):
        header = (4).to_bytes(4, "little") + session.remote_index.to_bytes(4, "little") + counter.to_bytes(8, "little")
        pair.b.receive_datagram(header + session.sender.encrypt(bytes(4) + counter.to_bytes(8, "little"), padded,
                                                                None), A_ADDR)
    assert [bytes(p) for p in pair.b.incoming] == [packet]  # only the last allowed counter
    assert pair.b.dropped["replay"] == 2


def test_sender_stops_at_reject_after_messages_and_handshakes(pair):
    pair.a_peer.current.send_counter = LIMIT - 1
    pair.clock.advance(6)  # past the handshake rate limit
    pair.a.send_packet(pair.a_to_b(b"last"))
    (data, _), (rekey, _) = pair.a.outgoing  # far past REKEY_AFTER_MESSAGES: a new handshake too
    assert transport_header(bytes(data))[1] == LIMIT - 1 and rekey[0] == 1
    pair.a.outgoing.clear()
    pair.clock.advance(6)
    pair.a.send_packet(pair.a_to_b(b"one too many"))
    assert [d[0][0] for d in pair.a.outgoing] == [1]  # an initiation, no transport
    assert list(pair.a_peer.staged) == [pair.a_to_b(b"one too many")]


def test_replayed_initiation_is_dropped_without_a_response():
    pair = make_pair()
    pair.net.drop = lambda d: d.kind == RESPONSE
    pair.a.send_packet(pair.a_to_b())
    pair.net.flush()
    (initiation,) = pair.net.sent(pair.a, 1)
    first_session = pair.b_peer.next
    assert first_session is not None
    pair.clock.advance(1)  # well past the flood limit: only the timestamp can reject it
    pair.net.deliver(initiation)
    pair.net.deliver(initiation, src=("203.0.113.9", 1))
    assert pair.b.dropped["replayed_initiation"] == 2
    assert pair.b.outgoing == [] and pair.b_peer.next is first_session
    assert pair.b_peer.endpoint == A_ADDR


def test_initiation_with_an_older_timestamp_is_dropped_newer_accepted():
    pair = make_pair()
    a_priv = pair.net.private_key(pair.a)
    now = pair.net.wall_clock()
    pair.b.receive_datagram(craft_initiation(a_priv, pair.b.public_key, tai64n(now), 1).message, A_ADDR)
    assert len(pair.b.outgoing) == 1
    pair.clock.advance(1)
    pair.b.receive_datagram(craft_initiation(a_priv, pair.b.public_key, tai64n(now - 60), 2).message, A_ADDR)
    pair.b.receive_datagram(craft_initiation(a_priv, pair.b.public_key, tai64n(now), 3).message, A_ADDR)
    assert pair.b.dropped["replayed_initiation"] == 2 and len(pair.b.outgoing) == 1
    pair.b.receive_datagram(craft_initiation(a_priv, pair.b.public_key, tai64n(now + 0.05), 4).message, A_ADDR)
    assert len(pair.b.outgoing) == 2  # newer: answered


def test_initiation_flood_is_dropped():
    """Initiations with ever newer timestamps, but less than 20 ms apart on the responder's clock."""
    pair = make_pair()
    a_priv = pair.net.private_key(pair.a)
    now = pair.net.wall_clock()

    def send(index: int, wall: float) -> None:
        pair.b.receive_datagram(craft_initiation(a_priv, pair.b.public_key, tai64n(wall), index).message, A_ADDR)

    send(1, now)
    pair.clock.advance(0.010)
    send(2, now + 1)
    pair.clock.advance(0.005)
    send(3, now + 2)
    assert pair.b.dropped["initiation_flood"] == 2 and len(pair.b.outgoing) == 1
    pair.clock.advance(0.021)
    send(4, now + 3)
    assert len(pair.b.outgoing) == 2


def test_forged_packets_cannot_advance_the_window(pair):
    """A forgery with a huge counter must not slide the window past real traffic."""
    session = pair.a_peer.current
    huge = 1 << 40
    forged = (4).to_bytes(4, "little") + session.remote_index.to_bytes(4, "little") + huge.to_bytes(8, "little")
    pair.b.receive_datagram(forged + aead_seal(bytes(32), huge, bytes(16), None), A_ADDR)
    assert pair.b.dropped["auth"] == 1
    (data,) = _sent_by_a(pair, [b"real"])
    pair.b.receive_datagram(data, A_ADDR)
    assert [bytes(p) for p in pair.b.incoming] == [pair.a_to_b(b"real")]
