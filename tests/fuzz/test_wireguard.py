"""Fuzzing the WireGuard core: random datagrams, and authentic ones (handshake initiation, response, cookie
reply, transport, made by real Devices) mutated, fed to a Device with a fake clock between timer ticks.

Nothing may escape `receive_datagram` or `tick`, and what a stranger can grow stays bounded: pending
handshakes, early initiations, the rate limiter's buckets, staged packets, timers, and what one input
makes the device send or hand up.
"""

from __future__ import annotations

import ipaddress

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kakuremichi.wg import messages
from kakuremichi.wg.device import MAX_EARLY_INITIATIONS, Device
from kakuremichi.wg.peer import Peer
from tests.wg.sansio_helpers import A_ADDR, A_IP, A_IP6, B_IP, B_IP6, ipv4, ipv6, make_pair

SOURCES = [A_ADDR, ("203.0.113.7", 40000), ("203.0.113.7", 40001), ("2001:db8::9", 51820)]
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                         HealthCheck.data_too_large])


def _cookie_reply_and_handshake() -> list[bytes]:
    """An initiation, a cookie reply and the ones after it, from a B under load (the same keys as every
    pair's: make_pair is seeded)."""
    pair = make_pair(b_kwargs={"handshakes_per_second_under_load": 0})
    pair.a.send_packet(pair.a_to_b())
    pair.net.flush()
    return [d.data for d in pair.net.log]


def _target(under_load: bool = False):
    """A pair with a session, and authentic datagrams for its B that it has not seen yet: A's next
    transport messages (data, keepalive), a fresh initiation of A's, and B-initiated handshake messages."""
    pair = make_pair()
    pair.establish()
    if under_load:
        pair.b.load_threshold = 0  # from now on every handshake message finds B under load
    corpus = _cookie_reply_and_handshake()
    a = pair.a
    for packet in (pair.a_to_b(b"x" * 100), b""):  # a data packet, a keepalive
        a.send_to_peer(pair.a_peer, packet)
    pair.clock.advance(6)
    pair.a_peer.last_initiation_sent = float("-inf")
    a._initiate_handshake(pair.a_peer, retry=False)
    corpus += [bytes(d) for d, _ in a.outgoing]
    a.outgoing.clear()
    kinds = {messages.MESSAGE_INITIATION, messages.MESSAGE_COOKIE_REPLY, messages.MESSAGE_TRANSPORT}
    assert kinds <= {d[0] for d in corpus}
    return pair, corpus


@st.composite
def mutated(draw, corpus: list[bytes]) -> bytes:
    data = bytearray(draw(st.sampled_from(corpus)))
    for _ in range(draw(st.integers(0, 4))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    cut = draw(st.one_of(st.none(), st.integers(0, len(data))))
    if cut is not None:
        data = data[:cut]
    return bytes(data) + draw(st.binary(max_size=8))


def datagrams(corpus: list[bytes]):
    return st.one_of(st.binary(max_size=200), mutated(corpus), st.sampled_from(corpus))


def steps(corpus: list[bytes]):
    return st.lists(st.tuples(datagrams(corpus), st.sampled_from(SOURCES), st.floats(0, 30)), min_size=1,
                    max_size=25)


def _assert_bounded(device: Device, inputs: int, outgoing: int, incoming: int) -> None:
    pending = [entry for entry in device._index.values() if isinstance(entry, Peer)]
    assert len(pending) <= len(device.peers)  # one handshake of ours per peer at most
    assert len(device._index) <= 4 * len(device.peers)  # + current, previous, next session each
    assert len(device._early_initiations) <= MAX_EARLY_INITIATIONS
    assert len(device.rate_limiter) <= len(SOURCES)
    assert all(len(peer.staged) <= peer.staged.maxlen for peer in device.peers.values())
    assert len(device._timers) <= 2 * len(device.peers) * 5 + inputs  # per peer and timer, re-armed at most
    assert outgoing <= 2 * inputs + 2 * len(device.peers) and incoming <= inputs


def _feed(device: Device, clock, steps) -> None:
    outgoing = incoming = 0
    for n, (data, source, wait) in enumerate(steps, 1):
        device.receive_datagram(data, source)
        clock.advance(wait)
        device.tick()
        outgoing += len(device.outgoing)
        incoming += len(device.incoming)
        device.outgoing.clear()
        device.incoming.clear()
        _assert_bounded(device, n, outgoing, incoming)


@FUZZ
@given(st.data())
def test_a_device_with_a_session_survives_random_and_mutated_datagrams(data):
    pair, corpus = _target()
    _feed(pair.b, pair.clock, data.draw(steps(corpus)))


@FUZZ
@given(st.data())
def test_a_device_under_load_survives_random_and_mutated_datagrams(data):
    """Under load B checks mac2, sends cookie replies and rate-limits by source: those tables too."""
    pair, corpus = _target(under_load=True)
    _feed(pair.b, pair.clock, data.draw(steps(corpus)))


@FUZZ
@given(st.data())
def test_a_device_without_peers_keeps_strangers_bounded(data):
    pair, corpus = _target()
    stranger = Device(pair.net.private_key(pair.b), clock=pair.clock, wall_clock=pair.net.wall_clock)
    inputs = data.draw(st.lists(st.tuples(datagrams(corpus), st.sampled_from(SOURCES)), max_size=40))
    for datagram, source in inputs:
        stranger.receive_datagram(datagram, source)
    assert not stranger.incoming and not stranger._index
    assert len(stranger._early_initiations) <= 1  # only A's, the one key that can mac and sign for B
    assert len(stranger.outgoing) <= len(inputs)


@st.composite
def inner_packets(draw) -> bytes:
    """What an authenticated peer may put inside its transport messages: random bytes, or IPv4/IPv6
    headers from its own, an allowed or a foreign source whose length fields may lie."""
    kind = draw(st.sampled_from(["bytes", "v4", "v6"]))
    if kind == "bytes":
        return draw(st.binary(min_size=1, max_size=80))
    payload = draw(st.binary(max_size=60))
    if kind == "v4":
        source = draw(st.sampled_from([A_IP, B_IP, "10.0.0.9", "0.0.0.0"]))
        return ipv4(source, B_IP, payload, total_length=draw(st.one_of(st.none(), st.integers(0, 0xFFFF))))
    source = draw(st.sampled_from([A_IP6, B_IP6, "fd00::9"]))
    return ipv6(source, B_IP6, payload, payload_length=draw(st.one_of(st.none(), st.integers(0, 0xFFFF))))


@FUZZ
@given(st.lists(inner_packets(), min_size=1, max_size=30))
def test_authentic_transport_messages_hand_up_only_whole_packets_from_the_peers_own_addresses(packets):
    """Past decryption the inner packet is the peer's to shape: B reads its length and source (and keeps
    routing answers per address) without raising, and hands up only packets whose header fits them and whose
    source A may use, cut to the length the header claims."""
    pair = make_pair()
    pair.establish()
    for packet in packets:
        pair.a.send_to_peer(pair.a_peer, packet)
        for datagram, _ in pair.a.datagrams_to_send():
            pair.b.receive_datagram(datagram, A_ADDR)
        for received in pair.b.packets_received():
            received = bytes(received)
            assert packet.startswith(received)
            version = received[0] >> 4
            if version == 4:
                assert received[12:16] == ipaddress.ip_address(A_IP).packed
                assert int.from_bytes(received[2:4], "big") == len(received) >= 20
            else:
                assert version == 6 and received[8:24] == ipaddress.ip_address(A_IP6).packed
                assert 40 + int.from_bytes(received[4:6], "big") == len(received)
