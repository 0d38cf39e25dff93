"""Malformed and hostile packets, built with scapy: dropped and counted, never an exception or a leak."""

from __future__ import annotations

import random
import struct
import tracemalloc

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP, fragment

from kakuremichi.netstack import icmp, ipv4, tcp
from kakuremichi.netstack.checksum import finish, partial, pseudo_header
from kakuremichi.netstack.stack import Stack
from kakuremichi.netstack.tcp import State

OURS, THEM = "10.70.0.1", "10.70.0.9"
NOW = 100.0


def new_stack() -> Stack:
    stack = Stack([OURS], 1420)
    stack.listen(80, backlog=16)
    return stack


def feed(stack: Stack, *packets, now: float = NOW) -> list[bytes]:
    stack.receive([bytes(p) for p in packets], now)
    stack.poll(now)
    return stack.take_outgoing()


def replies(packets: list[bytes]) -> list[IP]:
    return [IP(p) for p in packets]


def syn(sport: int = 40000, seq: int = 1000, **options) -> IP:
    return IP(src=THEM, dst=OURS) / TCP(sport=sport, dport=80, flags="S", seq=seq, **options)


def handshake(stack: Stack, sport: int = 40000) -> tuple[tcp.Connection, int, int]:
    """Complete a handshake as a hand-driven client; returns the connection, our next seq and theirs."""
    (synack,) = replies(feed(stack, syn(sport, options=[("MSS", 1000), ("SAckOK", b""), ("WScale", 2)])))
    assert synack[TCP].flags == "SA"
    ack = IP(src=THEM, dst=OURS) / TCP(sport=sport, dport=80, flags="A", seq=1001, ack=synack[TCP].seq + 1,
                                       window=8192)
    assert feed(stack, ack) == []
    connection = stack.connections[(ipv4.address(THEM), sport, ipv4.address(OURS), 80)]
    assert connection.state == State.ESTABLISHED
    return connection, 1001, synack[TCP].seq + 1


def test_bad_checksums_are_dropped():
    stack = new_stack()
    bad_ip = IP(bytes(syn()))
    bad_ip.chksum ^= 0xFFFF
    bad_tcp = syn(chksum=0xDEAD)
    bad_udp = IP(src=THEM, dst=OURS) / UDP(sport=1, dport=53, chksum=0xBEEF) / b"q"
    bad_icmp = IP(src=THEM, dst=OURS) / ICMP(type=8, chksum=0x1234) / b"ping"
    assert feed(stack, bad_ip, bad_tcp, bad_udp, bad_icmp) == []
    assert stack.drops["bad-checksum"] == 3 and stack.drops["icmp-ignored"] == 1
    assert not stack.connections


def test_authenticated_link_skips_transport_checksums_but_not_the_ip_header():
    stack = Stack([OURS], 1420, link_authenticated=True)
    stack.listen(80, backlog=16)
    endpoint = stack.udp_bind(53)
    bad_ip = IP(bytes(syn(sport=40001)))
    bad_ip.chksum ^= 0xFFFF
    answers = replies(feed(stack, syn(chksum=0xDEAD), bad_ip,
                           IP(src=THEM, dst=OURS) / UDP(sport=1, dport=53, chksum=0xBEEF) / b"q"))
    assert [(a[TCP].dport, a[TCP].flags) for a in answers] == [(40000, "SA")]
    assert endpoint.pop()[0] == b"q"
    assert stack.drops["bad-checksum"] == 1


def test_checksum_of_segments_wider_than_the_folding_threshold():
    payload = bytes(range(256)) * 40  # a 10 KB sum: folded in halves before the final modulo
    reference = 0
    for i in range(0, len(payload), 2):
        reference += payload[i] << 8 | payload[i + 1]
    while reference >> 16:
        reference = (reference & 0xFFFF) + (reference >> 16)
    assert finish(partial(payload)) == 0xFFFF - reference != 0


def test_udp_without_checksum_is_accepted():
    stack = new_stack()
    endpoint = stack.udp_bind(53)
    packet = IP(src=THEM, dst=OURS) / UDP(sport=1, dport=53) / b"query"
    raw = bytearray(bytes(packet))
    raw[26:28] = b"\x00\x00"  # UDP checksum 0: "none computed"
    feed(stack, raw)
    assert endpoint.pop()[0] == b"query"


def test_every_truncation_of_a_valid_packet_is_dropped():
    stack = new_stack()
    whole = bytes(syn(options=[("MSS", 1400), ("WScale", 7), ("SAckOK", b"")]) / b"data")
    for size in range(len(whole)):
        assert feed(stack, whole[:size]) == []
    assert sum(stack.drops.values()) == len(whole)
    assert not stack.connections


@pytest.mark.parametrize("mangle", [
    lambda p: p.__setattr__("ihl", 4),  # header shorter than 20 bytes
    lambda p: p.__setattr__("ihl", 15),  # header longer than the packet
    lambda p: p.__setattr__("len", 2000),  # total length beyond the data
    lambda p: p.__setattr__("version", 6),
    lambda p: p[TCP].__setattr__("dataofs", 3),
    lambda p: p[TCP].__setattr__("dataofs", 15),
])
def test_bogus_header_fields_are_dropped(mangle):
    stack = new_stack()
    packet = syn()
    mangle(packet)
    assert feed(stack, packet) == []
    assert sum(stack.drops.values()) == 1 and not stack.connections


@pytest.mark.parametrize("options", [
    b"\x02\x00\x05\xb4",  # MSS with length 0
    b"\x02\x03\x05\x00",  # MSS with length 3
    b"\x03\x04\x07\x00",  # window scale with length 4
    b"\x05\x03\x00\x00",  # SACK with a length that is not 2 + 8n
    b"\x08\x0a\x00\x00",  # timestamps running past the header
])
def test_bogus_options_drop_the_segment(options):
    stack = new_stack()
    them, ours = ipv4.address(THEM), ipv4.address(OURS)
    segment = bytearray(struct.pack("!HHIIBBHHH", 40000, 80, 1, 0, 6 << 4, tcp.SYN, 65535, 0, 0) + options)
    segment[16:18] = finish(pseudo_header(them, ours, ipv4.PROTO_TCP, len(segment)) + partial(segment)).to_bytes(
        2, "big")
    assert feed(stack, ipv4.build(them, ours, ipv4.PROTO_TCP, segment)) == []
    assert stack.drops["bad-options"] == 1 and not stack.connections


def test_extreme_option_values_are_clamped():
    stack = new_stack()
    (synack,) = replies(feed(stack, syn(options=[("MSS", 1), ("WScale", 200)])))
    assert synack[TCP].flags == "SA"
    (connection,) = stack.connections.values()
    assert connection.snd_mss == tcp.MIN_MSS and connection.snd_wscale == tcp.MAX_WSCALE


def test_random_corruption_never_raises():
    stack = new_stack()
    stack.udp_bind(53)
    rng = random.Random(1)
    corpus = [bytes(syn(options=[("MSS", 1400), ("SAckOK", b"")]) / b"payload"),
              bytes(IP(src=THEM, dst=OURS) / UDP(sport=5, dport=53) / b"dns"),
              bytes(IP(src=THEM, dst=OURS) / ICMP(type=8) / b"ping"),
              bytes(IP(src=THEM, dst=OURS, flags="MF", frag=0, id=9) / UDP(sport=5, dport=53) / (b"x" * 64))]
    for _ in range(5000):
        packet = bytearray(rng.choice(corpus))
        for _ in range(rng.randint(1, 4)):
            packet[rng.randrange(len(packet))] = rng.randrange(256)
        feed(stack, packet, now=NOW + rng.random())


def test_syn_flood_keeps_the_syn_queue_bounded_and_real_clients_get_in():
    stack = new_stack()
    listener = stack.listeners[(0, 80)]
    rng = random.Random(2)

    def syns(count: int) -> list[bytes]:
        return [bytes(IP(src=f"10.{rng.randrange(1, 200)}.{rng.randrange(256)}.{rng.randrange(1, 255)}", dst=OURS)
                      / TCP(sport=rng.randrange(1024, 65535), dport=80, flags="S", seq=rng.randrange(1 << 32)))
                for _ in range(count)]

    def flood(packets: list[bytes]) -> None:
        for start in range(0, len(packets), 256):
            stack.receive(packets[start:start + 256], NOW)
            stack.take_outgoing()

    warm_up, attack = syns(1000), syns(5000)
    flood(warm_up)
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    flood(attack)
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    growth = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    assert len(listener.half_open) <= listener.syn_backlog
    assert len(stack.connections) <= listener.syn_backlog
    assert stack.drops["syn-queue-full"] >= 5000
    assert growth < 1 << 20, f"memory grew by {growth} bytes"  # 5000 kept half-open would be over 5 MB
    connection, _, _ = handshake(stack, sport=41000)  # a real client still completes its handshake
    assert listener.accept() is connection


def test_out_of_window_segments_are_not_accepted():
    stack = new_stack()
    connection, seq, ack = handshake(stack)
    far = IP(src=THEM, dst=OURS) / TCP(sport=40000, dport=80, flags="A", seq=seq + 10_000_000, ack=ack) / b"x"
    (reply,) = replies(feed(stack, far))
    assert reply[TCP].flags == "A" and reply[TCP].ack == seq  # an ACK restating what we expect
    assert not connection.rcv_buf
    feed(stack, IP(src=THEM, dst=OURS) / TCP(sport=40000, dport=80, flags="PA", seq=seq, ack=ack) / b"hello")
    old = IP(src=THEM, dst=OURS) / TCP(sport=40000, dport=80, flags="PA", seq=seq, ack=ack) / b"hello"
    (reply,) = replies(feed(stack, old))  # a duplicate: acknowledged, not delivered twice
    assert reply[TCP].ack == seq + 5 and connection.receive(100) == b"hello"
    future_ack = IP(src=THEM, dst=OURS) / TCP(sport=40000, dport=80, flags="A", seq=seq + 5, ack=ack + 999_999)
    (reply,) = replies(feed(stack, future_ack))  # acknowledges data we never sent
    assert reply[TCP].flags == "A" and connection.snd_una == connection.snd_max
    blind_rst = IP(src=THEM, dst=OURS) / TCP(sport=40000, dport=80, flags="R", seq=seq + 50_000_000)
    assert feed(stack, blind_rst) == []
    assert connection.state == State.ESTABLISHED


def test_reassembly_drops_overlaps_and_stays_bounded():
    stack = new_stack()
    echo = IP(src=THEM, dst=OURS, id=77) / ICMP(type=8, id=1, seq=1) / (b"z" * 3000)
    (reply,) = feed(stack, *fragment(echo, fragsize=1000))  # a well-formed fragmented ping is answered
    assert icmp.parse_echo_reply(reply).size == 3008
    first, second, *rest = fragment(IP(src=THEM, dst=OURS, id=78) / ICMP(type=8) / (b"y" * 3000), fragsize=1000)
    overlapping = second.copy()
    overlapping.frag -= 8  # starts inside the first fragment
    assert feed(stack, first, overlapping) == []
    assert len(stack.reassembler) == 0  # the whole datagram was thrown away
    assert feed(stack, second, *rest) == []  # and its other fragments cannot complete it
    many = [IP(src=THEM, dst=OURS, id=1000 + i, flags="MF") / UDP(sport=1, dport=2) / (b"p" * 504)
            for i in range(1000)]
    feed(stack, *many)
    assert len(stack.reassembler) <= ipv4.MAX_REASSEMBLIES_PER_SOURCE
    stack.poll(NOW + ipv4.REASSEMBLY_TIMEOUT + 1)
    assert len(stack.reassembler) == 0  # expired partial datagrams are freed


def test_spoofed_sources_get_no_answers():
    stack = new_stack()
    for source in ("0.0.0.0", "224.0.0.1", "255.255.255.255", OURS):
        assert feed(stack, IP(src=source, dst=OURS) / TCP(sport=1, dport=81, flags="S")) == []
    assert stack.drops["bad-source"] == 4


def test_closed_udp_port_errors_are_rate_limited():
    stack = new_stack()
    packets = [IP(src=THEM, dst=OURS) / UDP(sport=1, dport=9) / b"x" for _ in range(1000)]
    out = feed(stack, *packets)
    assert 0 < len(out) <= 100
    assert all(IP(p)[ICMP].type == 3 and IP(p)[ICMP].code == 3 for p in out)


def test_a_real_client_evicted_by_a_syn_flood_is_reset_when_it_completes_its_handshake():
    stack = new_stack()
    listener = stack.listeners[(0, 80)]
    (synack,) = replies(feed(stack, syn(40000)))
    for n in range(listener.syn_backlog):  # forged SYNs push the real client's half-open connection out
        feed(stack, IP(src=f"10.99.{n // 250}.{n % 250 + 1}", dst=OURS) / TCP(sport=50000, dport=80, flags="S"))
    assert (ipv4.address(THEM), 40000, ipv4.address(OURS), 80) not in stack.connections
    ack = IP(src=THEM, dst=OURS) / TCP(sport=40000, dport=80, flags="A", seq=1001, ack=synack[TCP].seq + 1)
    (reset,) = replies(feed(stack, ack))
    assert reset[TCP].flags == "R" and reset.dst == THEM and reset[TCP].seq == synack[TCP].seq + 1
