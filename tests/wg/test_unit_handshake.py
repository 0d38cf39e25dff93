"""The Noise_IKpsk2 handshake between two sans-IO devices, checked against an independent implementation."""

from __future__ import annotations

import struct

import pytest

from kakuremichi.wg import keys
from tests.wg.sansio_helpers import (
    A_ADDR,
    A_IP,
    B_ADDR,
    B_IP,
    INITIATION,
    RESPONSE,
    TRANSPORT,
    InitiatorState,
    aead_open,
    craft_initiation,
    finish_initiator,
    ipv4,
    is_keepalive,
    mac16,
    mac1_key,
    make_pair,
    open_initiation,
    raw_private,
    seal_transport,
    tai64n,
    transport_header,
)

PSK = bytes(range(32))


@pytest.mark.parametrize("psk", [None, PSK], ids=["no-psk", "psk"])
@pytest.mark.parametrize("initiator", ["a", "b"])
def test_handshake_either_direction_then_data_both_ways(psk, initiator):
    pair = make_pair(psk=psk)
    pair.establish(initiator)
    for sender, receiver, packet in ((pair.a, pair.b, pair.a_to_b(b"a->b")), (pair.b, pair.a, pair.b_to_a(b"b->a"))):
        assert sender.send_packet(packet)
        pair.net.flush()
        assert [bytes(p) for p in receiver.incoming] == [packet]
        receiver.incoming.clear()
    assert len(pair.net.sent(kind_=INITIATION)) == 1 and len(pair.net.sent(kind_=RESPONSE)) == 1
    assert pair.a_peer.current is not None and pair.b_peer.current is not None
    assert pair.a_peer.stats.last_handshake == pair.net.wall_clock()


def test_psk_mismatch_yields_no_session_and_counts_the_failure():
    pair = make_pair(a_psk=PSK, b_psk=bytes(reversed(PSK)))
    assert pair.a.send_packet(pair.a_to_b())
    pair.net.flush()
    assert len(pair.net.sent(pair.b, RESPONSE)) == 1  # the initiation itself does not involve the PSK
    assert pair.a.dropped["auth"] == 1  # but its response cannot be verified
    assert pair.a_peer.current is None and pair.b_peer.current is None
    assert pair.b.incoming == [] and len(pair.a_peer.staged) == 1
    assert pair.net.sent(kind_=TRANSPORT) == []


def test_initiation_to_a_wrong_public_key_fails_mac1():
    pair = make_pair()
    wrong = keys.public_from_private(keys.generate_private())
    pair.a.remove_peer(pair.b.public_key)
    pair.a.add_peer(wrong, endpoint=B_ADDR, allowed_ips=[f"{B_IP}/32"])
    pair.a.send_packet(pair.a_to_b())
    pair.net.flush()
    assert len(pair.net.sent(pair.a, INITIATION)) == 1
    assert pair.b.dropped["mac1"] == 1
    assert pair.net.sent(pair.b) == [] and pair.b_peer.next is None


def test_initiation_from_an_unknown_peer_is_dropped():
    pair = make_pair()
    pair.b.remove_peer(pair.a.public_key)
    pair.a.send_packet(pair.a_to_b())
    pair.net.flush()
    assert pair.b.dropped["unknown_peer"] == 1
    assert pair.net.sent(pair.b) == []


def test_own_public_key_or_low_order_point_cannot_be_a_peer():
    pair = make_pair()
    with pytest.raises(ValueError):
        pair.a.add_peer(pair.a.public_key)
    with pytest.raises(ValueError):
        pair.a.add_peer(bytes(32))


def test_key_confirmation_responder_session_waits_in_next_until_the_initiators_first_packet():
    pair = make_pair()
    pair.net.drop = lambda d: d.kind == TRANSPORT  # hold back the initiator's first transport packet
    pair.a.send_packet(pair.a_to_b(b"staged"))
    pair.net.flush()
    assert pair.a_peer.current is not None
    assert pair.b_peer.next is not None and pair.b_peer.current is None
    pending = pair.b_peer.next
    # the responder cannot send with an unconfirmed session: it stages instead
    assert pair.b.send_packet(pair.b_to_a(b"early"))
    assert list(pair.b_peer.staged) == [pair.b_to_a(b"early")]
    assert not any(d.sender is pair.b and d.kind == TRANSPORT for d in pair.net.log)

    pair.net.drop = lambda d: d.kind == INITIATION  # B's own handshake attempt is not needed
    held = pair.net.sent(pair.a, TRANSPORT)
    assert len(held) == 1
    pair.net.deliver(held[0])
    assert pair.b_peer.current is pending and pair.b_peer.next is None
    assert [bytes(p) for p in pair.b.incoming] == [pair.a_to_b(b"staged")]
    pair.net.flush()
    assert [bytes(p) for p in pair.a.incoming] == [pair.b_to_a(b"early")]  # staged, sent on confirmation
    assert not pair.b_peer.staged


def test_initiator_confirms_with_a_keepalive_when_nothing_is_staged():
    pair = make_pair()
    # enabling persistent keepalive with no session starts a handshake with nothing staged
    pair.a.add_peer(pair.b.public_key, endpoint=B_ADDR, allowed_ips=[f"{B_IP}/32"], persistent_keepalive=25)
    pair.net.flush()
    from_a = [d for d in pair.net.sent(pair.a)]
    assert [d.kind for d in from_a] == [INITIATION, TRANSPORT]
    assert is_keepalive(from_a[1].data)
    assert pair.b_peer.current is not None and pair.b_peer.next is None  # confirmed by the keepalive
    assert pair.b.incoming == []  # keepalives deliver nothing


def test_staged_packets_are_delivered_in_order_after_the_handshake():
    pair = make_pair()
    packets = [pair.a_to_b(bytes([i]) * i) for i in range(1, 6)]
    for p in packets:
        assert pair.a.send_packet(p)
    assert len(pair.a_peer.staged) == 5
    assert len(pair.a.outgoing) == 1 and pair.a.outgoing[0][0][0] == INITIATION  # one handshake for all
    pair.net.flush()
    assert [bytes(p) for p in pair.b.incoming] == packets
    assert not pair.a_peer.staged
    assert not any(is_keepalive(d.data) for d in pair.net.sent(pair.a))  # data confirmed the session


def test_simultaneous_initiations_converge():
    pair = make_pair()
    pair.a.send_packet(pair.a_to_b(b"from a"))
    pair.b.send_packet(pair.b_to_a(b"from b"))
    pair.net.flush()
    assert [bytes(p) for p in pair.b.incoming] == [pair.a_to_b(b"from a")]
    assert [bytes(p) for p in pair.a.incoming] == [pair.b_to_a(b"from b")]
    pair.a.incoming.clear()
    pair.b.incoming.clear()
    for i in range(3):
        pair.a.send_packet(pair.a_to_b(bytes([i])))
        pair.b.send_packet(pair.b_to_a(bytes([i])))
        pair.net.flush()
    assert len(pair.a.incoming) == 3 and len(pair.b.incoming) == 3


@pytest.mark.parametrize("psk", [None, PSK], ids=["no-psk", "psk"])
def test_messages_match_an_independent_noise_implementation(psk):
    """Byte layouts, macs, timestamp and derived transport keys, recomputed from the whitepaper."""
    pair = make_pair(psk=psk)
    a_priv, b_priv = pair.net.private_key(pair.a), pair.net.private_key(pair.b)
    packet = pair.a_to_b(b"checked independently")
    pair.a.send_packet(packet)
    (initiation, dst), = pair.a.outgoing
    initiation = bytes(initiation)
    assert dst == B_ADDR and len(initiation) == 148
    handshake = pair.a_peer.handshake

    # initiation: type 1, reserved zero, sender index, then what the responder can decrypt
    assert initiation[:4] == b"\x01\x00\x00\x00"
    assert struct.unpack_from("<I", initiation, 4)[0] == handshake.local_index
    opened = open_initiation(b_priv, initiation)
    assert opened.initiator_static == pair.a.public_key
    assert opened.timestamp == tai64n(pair.net.wall_clock())
    assert initiation[116:132] == mac16(mac1_key(pair.b.public_key), initiation[:116])
    assert initiation[132:148] == bytes(16)  # no cookie: mac2 is zeros

    pair.net.flush()
    (response_dg,) = pair.net.sent(pair.b, RESPONSE)
    response = response_dg.data
    assert len(response) == 92 and response[:4] == b"\x02\x00\x00\x00"
    assert response_dg.dst == A_ADDR
    sender, receiver = struct.unpack_from("<II", response, 4)
    assert receiver == handshake.local_index
    assert sender == pair.b_peer.current.local_index
    assert response[60:76] == mac16(mac1_key(pair.a.public_key), response[:60])
    assert response[76:92] == bytes(16)

    # replay the initiator's side of the handshake from its ephemeral key and derive the transport keys
    state = InitiatorState(opened.chaining_key, opened.hash, raw_private(handshake.ephemeral), a_priv,
                           pair.b.public_key, handshake.local_index)
    responder_index, send_key, receive_key = finish_initiator(state, response, psk)
    assert responder_index == sender

    (data,) = pair.net.sent(pair.a, TRANSPORT)
    assert data.data[:4] == b"\x04\x00\x00\x00"
    assert transport_header(data.data) == (sender, 0)
    plaintext = aead_open(send_key, 0, data.data[16:], None)
    assert plaintext[:len(packet)] == packet and not any(plaintext[len(packet):])

    # and the other direction: what we seal with the derived key, the core accepts
    reply = ipv4(B_IP, A_IP, b"sealed by the test")
    pair.a.receive_datagram(seal_transport(receive_key, pair.a_peer.current.local_index, 0, reply), B_ADDR)
    assert [bytes(p) for p in pair.a.incoming] == [reply]


def test_core_accepts_an_independently_crafted_initiation_and_its_keys_work():
    pair = make_pair()
    a_priv = pair.net.private_key(pair.a)
    state = craft_initiation(a_priv, pair.b.public_key, tai64n(pair.net.wall_clock()), sender_index=0xA1B2C3D4)
    pair.b.receive_datagram(state.message, A_ADDR)
    ((response, dst),) = pair.b.outgoing
    assert dst == A_ADDR
    responder_index, send_key, receive_key = finish_initiator(state, bytes(response))
    packet = pair.a_to_b(b"hello from a hand-made initiator")
    pair.b.receive_datagram(seal_transport(send_key, responder_index, 0, packet), A_ADDR)
    assert [bytes(p) for p in pair.b.incoming] == [packet]
    assert pair.b_peer.current is not None  # confirmed by our packet
    pair.b.outgoing.clear()
    pair.b.send_packet(pair.b_to_a(b"back"))
    ((reply, _),) = pair.b.outgoing
    receiver, counter = transport_header(bytes(reply))
    assert receiver == 0xA1B2C3D4
    assert aead_open(receive_key, counter, bytes(reply)[16:], None)[:len(pair.b_to_a(b"back"))] == pair.b_to_a(b"back")



@pytest.mark.parametrize("seed", range(4))
def test_handshake_and_data_survive_heavy_loss(seed):
    """Half of all datagrams lost, in both directions: retransmissions still bring the tunnel up."""
    pair = make_pair(loss=0.5, seed=seed)
    t0 = pair.clock.now
    for second in range(60):
        pair.net.run_until(t0 + second)
        pair.a.send_packet(pair.a_to_b(second.to_bytes(2, "big")))
    pair.net.run_until(t0 + 70)
    assert pair.a_peer.current is not None and pair.b_peer.current is not None
    received = {int.from_bytes(bytes(p)[20:], "big") for p in pair.b.incoming}
    assert 10 < len(received) < 60  # a loss rate like the network's, and nothing invented
    assert received <= set(range(60))
    assert len(pair.net.sent(pair.a, INITIATION)) > 1  # it did take retransmissions


def test_initiation_that_arrives_just_before_its_peer_is_configured_is_answered_on_add():
    """A gateway learning of an agent a moment after the agent's first initiation answers it at once."""
    from kakuremichi.wg import keys as _keys
    from kakuremichi.wg.device import Device as _Device

    now = [1000.0]
    clock = lambda: now[0]  # noqa: E731
    agent = _Device(_keys.generate_private(), clock=clock)
    gateway = _Device(_keys.generate_private(), clock=clock)
    peer = agent.add_peer(gateway.public_key, endpoint=("127.0.0.1", 2), allowed_ips=["10.1.0.254/32"])
    agent._initiate_handshake(peer, retry=False)
    for datagram, _ in agent.outgoing:
        gateway.receive_datagram(datagram, ("127.0.0.1", 1))
    agent.outgoing.clear()
    assert gateway.dropped["unknown_peer"] == 1 and not gateway.outgoing

    now[0] += 0.5
    gateway.add_peer(agent.public_key, allowed_ips=["10.1.0.2/32"])
    assert len(gateway.outgoing) == 1  # the response, without waiting for the agent's retry
    for datagram, _ in gateway.outgoing:
        agent.receive_datagram(datagram, ("127.0.0.1", 2))
    assert peer.current is not None

    # Too old (past REKEY_TIMEOUT, when the initiator retries anyway) is not replayed.
    late = _Device(_keys.generate_private(), clock=clock)
    late_peer = late.add_peer(gateway.public_key, endpoint=("127.0.0.1", 3), allowed_ips=["10.1.0.3/32"])
    late._initiate_handshake(late_peer, retry=False)
    gateway.outgoing.clear()
    for datagram, _ in late.outgoing:
        gateway.receive_datagram(datagram, ("127.0.0.1", 3))
    now[0] += 6
    gateway.add_peer(late.public_key, allowed_ips=["10.1.0.3/32"])
    assert not gateway.outgoing
