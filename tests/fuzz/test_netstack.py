"""Fuzzing the netstack core: random packets, and valid ones (SYNs, segments of an open connection, UDP,
ICMP echo and errors about our own packets, fragment trains) mutated, fed through `Stack.receive` with a
fake clock that advances between batches and fires the timers.

Nothing may escape `receive` or `poll`, and nothing may reach the containment either: parsers refuse
malformed input with `Malformed`, they do not crash. What a peer can make the stack hold stays within its
budgets: reassembly datagrams, bytes and pieces (in total and per source), connections and half-open
handshakes, the answer limiter's table.
"""

from __future__ import annotations

import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption_NOP

from kakuremichi.netstack import icmp, ipv4, ratelimit
from kakuremichi.netstack.stack import Stack
from tests.netstack.test_hostile import OURS, THEM, handshake

SECRET = b"fuzz-netstack-16"  # the same ISNs in every example, so the corpus's segments stay in window
START = 100.0
SOURCES = [ipv4.address(THEM), ipv4.address("10.70.0.10"), ipv4.address("10.70.0.11")]
FUZZ = settings(max_examples=300, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _target(authenticated: bool) -> tuple[Stack, int, int]:
    """A stack listening on 80 with UDP 53 bound and one connection from THEM:40000 established."""
    stack = Stack([OURS], 1420, secret=SECRET, link_authenticated=authenticated)
    stack.listen(80, backlog=4)
    stack.udp_bind(53)
    connection, seq, ack = handshake(stack)
    connection.send(b"r" * 3000)  # data in flight, so ACKs and SACKs of the peer mean something
    stack.collect(connection)
    stack.poll(START)
    stack.take_outgoing()
    return stack, seq, ack


def _corpus() -> tuple[list[bytes], list[tuple[int, bytes]]]:
    """Valid packets for the target (each alone), and valid messages to send as fragment trains."""
    stack, seq, ack = _target(False)
    ours_out = ipv4.build(ipv4.address(OURS), ipv4.address(THEM), ipv4.PROTO_TCP,
                          bytes(TCP(sport=80, dport=40000, flags="A", seq=ack, ack=seq)))
    quoted = ipv4.parse(ours_out)
    link = IP(src=THEM, dst=OURS)
    flow = dict(sport=40000, dport=80)
    packets = [
        link / TCP(sport=41000, dport=80, flags="S", seq=5, options=[("MSS", 1200), ("SAckOK", b""), ("WScale", 7)]),
        link / TCP(sport=41001, dport=81, flags="S"),
        link / TCP(**flow, flags="PA", seq=seq, ack=ack + 1000, window=4096) / (b"d" * 300),
        link / TCP(**flow, flags="A", seq=seq + 600, ack=ack, options=[("SAck", (ack + 1400, ack + 2000))]),
        link / TCP(**flow, flags="FA", seq=seq, ack=ack),
        link / TCP(**flow, flags="R", seq=seq),
        link / TCP(**flow, flags="A", seq=seq, ack=ack, window=0),
        link / UDP(sport=5000, dport=53) / b"query",
        link / UDP(sport=5000, dport=9) / b"closed",
        link / ICMP(type=8, id=3, seq=1) / b"ping",
        IP(src=THEM, dst=OURS, options=[IPOption_NOP()] * 4) / ICMP(type=8) / b"options",
        ipv4.build(ipv4.address(THEM), ipv4.address(OURS), ipv4.PROTO_ICMP, bytes(IP(
            icmp.unreachable(quoted, icmp.FRAGMENTATION_NEEDED))[ICMP])),
        link / ICMP(type=3, code=4, nexthopmtu=600) / bytes(IP(ours_out))[:28],
        IP(src=THEM, dst=OURS, proto=99) / b"unknown protocol",
    ]
    messages = [(ipv4.PROTO_UDP, bytes(UDP(sport=5000, dport=53) / (b"u" * 3000))),
                (ipv4.PROTO_ICMP, bytes(ICMP(type=8) / (b"e" * 4000))),
                (ipv4.PROTO_TCP, bytes(TCP(**flow, flags="PA", seq=seq, ack=ack) / (b"t" * 2000)))]
    return [bytes(p) for p in packets], messages


CORPUS, MESSAGES = _corpus()


@st.composite
def mutated(draw) -> bytes:
    """A corpus packet with a few bytes changed anywhere (so mostly a bad IP checksum), maybe truncated."""
    data = bytearray(draw(st.sampled_from(CORPUS)))
    for _ in range(draw(st.integers(0, 4))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    cut = draw(st.one_of(st.none(), st.integers(0, len(data))))
    return bytes(data[:cut]) + draw(st.binary(max_size=8))


@st.composite
def rewrapped(draw) -> bytes:
    """A corpus packet whose IP payload is mutated under a valid IP header, perhaps as a fragment."""
    datagram = ipv4.parse(draw(st.sampled_from(CORPUS)))
    payload = bytearray(datagram.payload)
    for _ in range(draw(st.integers(0, 6))):
        if payload:
            payload[draw(st.integers(0, len(payload) - 1))] = draw(st.integers(0, 255))
    payload = payload[:draw(st.integers(0, len(payload)))] + draw(st.binary(max_size=16))
    fragment = draw(st.one_of(st.just(0), st.integers(0, 0x3FFF)))
    return ipv4.build(draw(st.sampled_from(SOURCES)), datagram.destination, datagram.protocol, payload,
                      ident=draw(st.integers(0, 3)), fragment=fragment)


@st.composite
def fragment_train(draw) -> list[bytes]:
    """A valid message fragmented at a random MTU, then shuffled, thinned, duplicated or re-offset."""
    protocol, message = draw(st.sampled_from(MESSAGES))
    mtu = draw(st.one_of(st.integers(276, 1500), st.integers(68, 275)))  # the latter: too small to be held
    pieces = ipv4.fragment(draw(st.sampled_from(SOURCES)), ipv4.address(OURS), protocol, message, mtu,
                           ident=draw(st.integers(0, 3)))
    rng = random.Random(draw(st.integers(0, 1 << 32)))
    rng.shuffle(pieces)
    pieces = [p for p in pieces if rng.random() > draw(st.floats(0, 0.3))]
    pieces += rng.sample(pieces, min(len(pieces), draw(st.integers(0, 2))))
    if pieces and draw(st.booleans()):
        datagram = ipv4.parse(pieces[0])
        pieces[0] = ipv4.build(datagram.source, datagram.destination, datagram.protocol, datagram.payload,
                               ident=datagram.ident, fragment=datagram.fragment ^ draw(st.integers(1, 0x3FFF)))
    return pieces


def batches():
    packet = st.one_of(st.binary(max_size=120), mutated(), rewrapped(), st.sampled_from(CORPUS))
    batch = st.one_of(st.lists(packet, min_size=1, max_size=8), fragment_train())
    return st.lists(st.tuples(batch, st.floats(0, 20)), min_size=1, max_size=12)


def _assert_bounded(stack: Stack) -> None:
    assert stack.faults.total == 0 and stack.drops["contained"] == 0
    reassembler = stack.reassembler
    assert len(reassembler) <= ipv4.MAX_REASSEMBLIES and reassembler.held_bytes <= ipv4.MAX_REASSEMBLY_BYTES
    for source in SOURCES:
        datagrams, held = reassembler.held_by(source)
        assert datagrams <= ipv4.MAX_REASSEMBLIES_PER_SOURCE and held <= ipv4.MAX_REASSEMBLY_BYTES_PER_SOURCE
    assert all(len(p.pieces) <= ipv4.MAX_FRAGMENTS for p in reassembler._partials.values())
    (listener,) = stack.listeners.values()
    assert len(listener.half_open) <= listener.syn_backlog and len(listener.queue) <= listener.backlog
    assert sum(map(len, listener.half_open_by_source.values())) == len(listener.half_open)
    assert len(stack.connections) <= 1 + listener.syn_backlog + listener.backlog
    assert len(stack.answers) <= ratelimit.MAX_SOURCES


@FUZZ
@given(steps=batches(), authenticated=st.booleans())
def test_receive_survives_random_and_mutated_packets(steps, authenticated):
    stack, _, _ = _target(authenticated)
    now = START
    for packets, pause in steps:
        stack.receive(packets, now)
        stack.poll(now)
        stack.take_outgoing()
        _assert_bounded(stack)
        now += pause
        stack.poll(now)
        _assert_bounded(stack)
