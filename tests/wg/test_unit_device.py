"""Device behaviour around the protocol: cryptokey routing, endpoint roaming, peer changes, padding."""

from __future__ import annotations

import struct

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6

from tests.wg.sansio_helpers import (
    A_ADDR,
    A_IP,
    A_IP6,
    B_ADDR,
    B_IP,
    B_IP6,
    INITIATION,
    RESPONSE,
    TRANSPORT,
    Network,
    ipv4,
    ipv6,
    established_pair,
    make_pair,
    stamp,
    transport_header,
)

NEW_ADDR = ("203.0.113.50", 60000)
ELSEWHERE = ("198.18.0.1", 1234)


@pytest.fixture
def pair():
    return established_pair()


# ---------------------------------------------------------------------------------------------- roaming

def test_endpoint_follows_the_latest_authenticated_packet(pair):
    pair.net.move(pair.a, NEW_ADDR)  # A's NAT mapping changed
    pair.a.send_packet(pair.a_to_b(b"from my new address"))
    pair.net.flush()
    assert pair.b_peer.endpoint == NEW_ADDR
    pair.b.send_packet(pair.b_to_a(b"found you"))
    pair.net.flush()
    assert pair.net.sent(pair.b)[-1].dst == NEW_ADDR
    assert [bytes(p) for p in pair.a.incoming] == [pair.b_to_a(b"found you")]


def test_a_keepalive_moves_the_endpoint(pair):
    pair.net.move(pair.a, NEW_ADDR)
    pair.a.add_peer(pair.b.public_key, endpoint=B_ADDR, allowed_ips=[f"{B_IP}/32"], persistent_keepalive=25)
    pair.net.flush()  # just a keepalive
    assert [d.data[0] for d in pair.net.sent(pair.a)] == [TRANSPORT]
    assert pair.b_peer.endpoint == NEW_ADDR


def test_an_initiation_moves_the_endpoint():
    pair = make_pair()
    pair.net.move(pair.a, NEW_ADDR)
    pair.a.send_packet(pair.a_to_b(b"hello from elsewhere"))
    pair.net.flush()
    assert pair.b_peer.endpoint == NEW_ADDR
    assert pair.net.sent(pair.b, RESPONSE)[0].dst == NEW_ADDR
    assert [bytes(p) for p in pair.b.incoming] == [pair.a_to_b(b"hello from elsewhere")]


def test_unauthenticated_packets_do_not_move_the_endpoint(pair):
    pair.a.send_packet(pair.a_to_b())
    ((genuine, _),) = pair.a.outgoing
    pair.a.outgoing.clear()
    forged = bytearray(genuine)
    forged[-1] ^= 1
    pair.b.receive_datagram(bytes(forged), ELSEWHERE)  # bad tag
    pair.b.receive_datagram(bytes(genuine), A_ADDR)
    pair.b.receive_datagram(bytes(genuine), ELSEWHERE)  # replay
    junk_initiation = stamp(struct.pack("<II", INITIATION, 5) + bytes(140), pair.b.public_key)
    pair.b.receive_datagram(junk_initiation, ELSEWHERE)  # valid mac1, but not from anyone
    junk_response = stamp(struct.pack("<III", RESPONSE, 5, pair.b_peer.current.local_index) + bytes(80),
                          pair.b.public_key)
    pair.b.receive_datagram(junk_response, ELSEWHERE)
    assert sum(pair.b.dropped.values()) == 4
    assert pair.b_peer.endpoint == A_ADDR


def test_responder_flushes_staged_packets_to_the_address_that_confirmed_the_session():
    """wireguard-go sets the endpoint from the confirming packet *before* sending what was staged."""
    pair = make_pair(b_knows_a_endpoint=False)
    pair.b.send_packet(pair.b_to_a(b"waiting for A"))  # no endpoint yet: staged
    assert list(pair.b_peer.staged) == [pair.b_to_a(b"waiting for A")]
    pair.net.drop = lambda d: d.kind == TRANSPORT
    pair.a.add_peer(pair.b.public_key, endpoint=B_ADDR, allowed_ips=[f"{B_IP}/32"], persistent_keepalive=25)
    pair.net.flush()  # A initiates from A_ADDR; its confirming keepalive is held
    (confirmation,) = pair.net.sent(pair.a, TRANSPORT)
    pair.net.drop = None
    pair.net.move(pair.a, NEW_ADDR)  # and A's address changes before it arrives
    pair.net.deliver(confirmation, src=NEW_ADDR)
    pair.net.flush()
    assert pair.net.sent(pair.b, TRANSPORT)[0].dst == NEW_ADDR
    assert [bytes(p) for p in pair.a.incoming] == [pair.b_to_a(b"waiting for A")]


# ---------------------------------------------------------------------------------------------- routing

def test_inbound_packet_with_a_source_outside_the_peers_allowed_ips_is_dropped(pair):
    spoofed = ipv4("10.0.0.99", B_IP, b"not A's address")
    assert pair.a.send_packet(spoofed)  # routed by destination, so A sends it
    pair.a.send_packet(ipv6("fd00::99", B_IP6, b"v6 too"))
    pair.net.flush()
    assert pair.b.incoming == [] and pair.b.dropped["source_not_allowed"] == 2
    pair.a.send_packet(ipv6(A_IP6, B_IP6, b"allowed v6"))
    pair.net.flush()
    assert [bytes(p) for p in pair.b.incoming] == [ipv6(A_IP6, B_IP6, b"allowed v6")]


def test_outbound_packet_without_a_route_is_dropped(pair):
    assert not pair.a.send_packet(ipv4(A_IP, "10.9.9.9", b"nowhere"))
    assert not pair.a.send_packet(ipv6(A_IP6, "fd99::1", b"nowhere"))
    assert not pair.a.send_packet(b"")
    assert not pair.a.send_packet(b"\x45" + bytes(5))  # too short to be IPv4
    assert not pair.a.send_packet(b"\x70" + bytes(40))  # not IP at all
    assert pair.a.dropped["no_route"] == 5 and pair.a.outgoing == []


def test_longest_prefix_chooses_the_peer():
    net = Network()
    hub = net.add(("192.0.2.1", 1))
    wide = net.add(("192.0.2.2", 2))
    narrow = net.add(("192.0.2.3", 3))
    hub.add_peer(wide.public_key, endpoint=("192.0.2.2", 2), allowed_ips=["10.0.0.0/8", "::/0"])
    hub.add_peer(narrow.public_key, endpoint=("192.0.2.3", 3), allowed_ips=["10.1.0.0/16", "fd00:1::/32"])
    for peer in (wide, narrow):
        peer.add_peer(hub.public_key, allowed_ips=["10.255.0.1/32", "fd00:ffff::1/128"])
    for dst, expected in (("10.1.2.3", narrow), ("10.2.0.1", wide), ("10.1.255.255", narrow)):
        hub.send_packet(ipv4("10.255.0.1", dst, dst.encode()))
        net.flush()
        assert [bytes(p) for p in expected.incoming] == [ipv4("10.255.0.1", dst, dst.encode())]
        expected.incoming.clear()
    for dst, expected in (("fd00:1::5", narrow), ("fd00:2::5", wide), ("2001:db8::1", wide)):
        hub.send_packet(ipv6("fd00:ffff::1", dst, dst.encode()))
        net.flush()
        assert [bytes(p) for p in expected.incoming] == [ipv6("fd00:ffff::1", dst, dst.encode())]
        expected.incoming.clear()


# ---------------------------------------------------------------------------------------------- peer changes

def test_add_peer_again_updates_settings_and_keeps_sessions(pair):
    session = pair.a_peer.current
    peer = pair.a.add_peer(pair.b.public_key, allowed_ips=["10.0.0.0/24"])
    assert peer is pair.a_peer and pair.a_peer.current is session
    assert pair.a_peer.endpoint == B_ADDR  # not given: kept
    assert not pair.a.send_packet(ipv6(A_IP6, B_IP6, b"no longer routed"))
    assert pair.a.send_packet(ipv4(A_IP, "10.0.0.77", b"newly routed"))
    assert [bytes(d)[0] for d, _ in pair.a.outgoing] == [TRANSPORT]  # same session, no handshake
    pair.a.add_peer(pair.b.public_key, endpoint=NEW_ADDR, allowed_ips=["10.0.0.0/24"])
    assert pair.a_peer.endpoint == NEW_ADDR and pair.a_peer.current is session


def test_add_peer_again_with_a_new_psk_applies_to_the_next_handshake(pair):
    psk = bytes(range(32))
    pair.a.add_peer(pair.b.public_key, preshared_key=psk, endpoint=B_ADDR, allowed_ips=[f"{B_IP}/32"])
    pair.a.send_packet(pair.a_to_b(b"old session still fine"))
    pair.net.flush()
    assert len(pair.b.incoming) == 1 and pair.net.sent(kind_=INITIATION) == []
    pair.net.run_until(pair.clock.now + 121)
    pair.a.send_packet(pair.a_to_b())  # rekey: B still has no PSK, so this handshake fails
    pair.net.flush()
    assert pair.a.dropped["auth"] == 1
    pair.b.add_peer(pair.a.public_key, preshared_key=psk, endpoint=A_ADDR, allowed_ips=[f"{A_IP}/32"])
    pair.net.run_until(pair.clock.now + 6)  # the retry now agrees
    assert pair.a_peer.previous is not None and pair.a.dropped["auth"] == 1


def test_remove_peer_forgets_its_indices_and_routes(pair):
    pair.a.send_packet(pair.a_to_b(b"in flight"))
    ((held, _),) = pair.a.outgoing
    pair.a.outgoing.clear()
    index = transport_header(bytes(held))[0]
    assert index in pair.b._index
    pair.b.remove_peer(pair.a.public_key)
    assert pair.b._index == {} and pair.a.public_key not in pair.b.peers
    pair.b.receive_datagram(bytes(held), A_ADDR)
    assert pair.b.dropped["unknown_index"] == 1 and pair.b.incoming == []
    assert not pair.b.send_packet(pair.b_to_a())
    pair.b.remove_peer(pair.a.public_key)  # removing twice is harmless
    # its timers are gone too: nothing is ever sent to it again
    pair.net.run_until(pair.clock.now + 1000)
    assert pair.net.sent(pair.b) == []


def test_remove_peer_with_a_pending_handshake_then_add_it_back():
    pair = make_pair()
    pair.net.drop = lambda d: d.kind == RESPONSE
    pair.a.send_packet(pair.a_to_b())
    pair.net.flush()
    (response,) = pair.net.sent(pair.b, RESPONSE)
    pair.a.remove_peer(pair.b.public_key)
    pair.a.receive_datagram(response.data, B_ADDR)
    assert pair.a.dropped["unknown_index"] == 1
    pair.net.run_until(pair.clock.now + 30)
    assert len(pair.net.sent(pair.a, INITIATION)) == 1  # no retransmissions for a removed peer
    pair.net.drop = None
    pair.a.add_peer(pair.b.public_key, endpoint=B_ADDR, allowed_ips=[f"{B_IP}/32"])
    pair.a.send_packet(pair.a_to_b(b"back again"))
    pair.net.flush()
    assert [bytes(p) for p in pair.b.incoming] == [pair.a_to_b(b"back again")]


# ---------------------------------------------------------------------------------------------- padding

def _roundup16(n: int) -> int:
    return (n + 15) // 16 * 16


@pytest.mark.parametrize("mtu", [1420, 1280])
def test_transport_padding_to_16_bytes_capped_at_the_mtu(mtu):
    pair = make_pair(a_kwargs={"mtu": mtu})
    pair.establish()
    for length in (20, 21, 28, 31, 32, 33, 100, mtu - 17, mtu - 16, mtu - 1, mtu):
        packet = ipv4(A_IP, B_IP, bytes(i % 251 for i in range(length - 20)))
        pair.a.send_packet(packet)
        ((datagram, _),) = pair.a.outgoing
        pair.a.outgoing.clear()
        assert len(datagram) == 16 + min(_roundup16(length), mtu) + 16, length
        pair.b.receive_datagram(bytes(datagram), A_ADDR)
        (received,) = pair.b.incoming
        pair.b.incoming.clear()
        assert bytes(received) == packet  # the padding is gone again


def test_padding_is_zeros_inside_the_ciphertext(pair):
    packet = pair.a_to_b(b"odd")
    pair.a.send_packet(packet)
    ((datagram, _),) = pair.a.outgoing
    # decrypt with the session's own key object, as a peer would: what follows the packet is zeros
    _, counter = transport_header(bytes(datagram))
    plaintext = pair.b_peer.current.receiver.decrypt(bytes(4) + counter.to_bytes(8, "little"),
                                                     bytes(datagram)[16:], None)
    assert len(plaintext) % 16 == 0 and plaintext[:len(packet)] == packet and not any(plaintext[len(packet):])


def test_received_padding_is_stripped_using_the_ip_length(pair):
    """Whatever follows the IP packet inside the ciphertext (padding, or junk) is cut off by its length."""
    send_key_holder = pair.a_peer.current
    index = send_key_holder.remote_index

    def deliver_plaintext(plaintext: bytes) -> None:
        counter = send_key_holder.send_counter
        send_key_holder.send_counter += 1
        sealed = send_key_holder.sender.encrypt(bytes(4) + counter.to_bytes(8, "little"), plaintext, None)
        pair.b.receive_datagram(struct.pack("<IIQ", TRANSPORT, index, counter) + sealed, A_ADDR)

    v4 = pair.a_to_b(b"exact")
    deliver_plaintext(v4 + b"\xAA" * 13)
    v6 = ipv6(A_IP6, B_IP6, b"six")
    deliver_plaintext(v6 + b"\xBB" * 5)
    assert [bytes(p) for p in pair.b.incoming] == [v4, v6]
    assert IP(bytes(pair.b.incoming[0])).len == len(v4) and IPv6(bytes(pair.b.incoming[1])).plen == 3

    before = sum(pair.b.dropped.values())
    deliver_plaintext(ipv4(A_IP, B_IP, b"short", total_length=200))  # claims more than it has
    deliver_plaintext(ipv6(A_IP6, B_IP6, b"short", payload_length=100))
    deliver_plaintext(b"\x45" + bytes(10))  # shorter than any IPv4 header
    deliver_plaintext(b"\x60" + bytes(30))  # shorter than an IPv6 header
    deliver_plaintext(b"\x10" + bytes(40))  # not IP
    assert len(pair.b.incoming) == 2 and sum(pair.b.dropped.values()) == before + 5


def test_real_udp_packets_survive_the_tunnel(pair):
    """Packets made by scapy, checksums and all, arrive byte for byte."""
    packets = [bytes(IP(src=A_IP, dst=B_IP) / UDP(sport=1000 + i, dport=53) / (b"q" * i)) for i in range(0, 300, 37)]
    packets.append(bytes(IPv6(src=A_IP6, dst=B_IP6) / UDP(sport=5, dport=6) / b"v6"))
    for p in packets:
        assert pair.a.send_packet(p)
    pair.net.flush()
    assert [bytes(p) for p in pair.b.incoming] == packets
    for raw in pair.b.incoming[:-1]:
        parsed = IP(bytes(raw))
        assert parsed[UDP].dport == 53


def test_output_is_handed_over_once():
    """datagrams_to_send / packets_received give what was produced since the last call, then nothing."""
    pair = make_pair()
    a, b = pair.a, pair.b
    a.send_packet(ipv4(A_IP, B_IP, b"staged until the handshake"))
    (initiation, where), = a.datagrams_to_send()
    assert initiation[0] == INITIATION and where == B_ADDR and a.datagrams_to_send() == []
    b.receive_datagram(initiation, A_ADDR)
    (response, _), = b.datagrams_to_send()
    a.receive_datagram(response, B_ADDR)
    for datagram, _ in a.datagrams_to_send():  # the staged packet, now in the session
        b.receive_datagram(datagram, A_ADDR)
    assert [bytes(p) for p in b.packets_received()] == [ipv4(A_IP, B_IP, b"staged until the handshake")]
    assert b.packets_received() == [] and b.incoming == []


def test_statistics_count_bytes(pair):
    pair.a.send_packet(pair.a_to_b(b"x" * 100))
    pair.net.flush()
    (datagram,) = pair.net.sent(pair.a, TRANSPORT)
    assert pair.a_peer.stats.tx_bytes >= len(datagram.data)
    assert pair.b_peer.stats.rx_bytes >= len(datagram.data)


def test_send_to_a_peer_without_endpoint_counts_a_drop():
    pair = make_pair(b_knows_a_endpoint=False)
    pair.b.send_packet(pair.b_to_a())
    assert pair.b.outgoing == [] and pair.b.dropped["no_endpoint"] == 1
    assert len(pair.b_peer.staged) == 1

