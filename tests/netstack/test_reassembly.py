"""IPv4 reassembly under attack, and the stack's containment of whatever its handlers did not foresee.

Fragments are built by hand (ipv4.build with an explicit fragment field) so that each test states exactly
which byte ranges arrive, in which order; the clock is a plain number the tests advance.
"""

from __future__ import annotations

import logging

from kakuremichi.netstack import ipv4, tcp, udp
from kakuremichi.netstack.stack import Stack
from tests.netstack.test_hostile import feed, handshake, new_stack

OURS, THEM, OTHER = ipv4.address("10.70.0.1"), ipv4.address("10.70.0.9"), ipv4.address("10.70.0.10")
MF = 0x2000
NOW = 100.0


def piece(data: bytes, offset: int, *, more: bool, ident: int = 7, source: int = THEM) -> bytes:
    """One fragment carrying `data` at byte `offset` of the datagram's payload."""
    return ipv4.build(source, OURS, ipv4.PROTO_UDP, data, ident=ident, fragment=(MF if more else 0) | offset >> 3)


def udp_message(size: int, source: int = THEM, port: int = 53) -> bytes:
    """A UDP datagram (header included) of `size` bytes to `port`, its payload a recognisable pattern."""
    return udp.build(source, 4000, OURS, port, bytes(i % 251 for i in range(size - udp.HEADER_LEN)))


def trusting_stack() -> tuple[Stack, object]:
    """A stack on an authenticated link (no UDP checksum to catch a wrong reassembly) with port 53 bound."""
    stack = Stack(["10.70.0.1"], 1420, link_authenticated=True)
    return stack, stack.udp_bind(53)


def test_pieces_beyond_the_last_fragment_never_make_a_datagram_without_its_start():
    # The attack of issue 13: bytes held (800 past the end + 800 before it) equal the end the last
    # fragment sets, so a count-only reassembler built a datagram with no offset-0 piece, and crashed.
    stack, endpoint = trusting_stack()
    feed(stack, piece(b"a" * 800, 1600, more=True), piece(b"b" * 800, 800, more=False))
    assert stack.drops["fragment-beyond-end"] == 1 and stack.faults.total == 0
    assert len(stack.reassembler) == 0 and endpoint.pop() is None


def test_holes_with_pieces_past_the_end_are_not_assembled_into_a_wrong_payload():
    stack, endpoint = trusting_stack()
    message = udp_message(2400)
    feed(stack, piece(message[:800], 0, more=True), piece(b"j" * 800, 2400, more=True),
         piece(message[1600:], 1600, more=False))  # 2400 bytes held for an end of 2400, a hole at 800
    assert endpoint.pop() is None and stack.drops["fragment-beyond-end"] == 1
    feed(stack, *(piece(message[i:i + 800], i, more=i < 1600, ident=8) for i in (1600, 800, 0)))
    assert endpoint.pop()[0] == message[udp.HEADER_LEN:]  # out of order, offset 0 last: whole and right


def test_a_datagram_waits_for_its_missing_start():
    stack, endpoint = trusting_stack()
    message = udp_message(2400)
    feed(stack, piece(message[800:1600], 800, more=True), piece(message[1600:], 1600, more=False))
    assert endpoint.pop() is None and len(stack.reassembler) == 1
    feed(stack, piece(message[:800], 0, more=True))
    assert endpoint.pop()[0] == message[udp.HEADER_LEN:] and len(stack.reassembler) == 0


def test_an_overlap_drops_the_whole_datagram():
    stack, endpoint = trusting_stack()
    message = udp_message(2400)
    feed(stack, piece(message[:800], 0, more=True), piece(message[792:1600], 792, more=True))
    assert stack.drops["fragment-overlap"] == 1 and len(stack.reassembler) == 0
    feed(stack, piece(message[800:1600], 800, more=True), piece(message[1600:], 1600, more=False))
    assert endpoint.pop() is None  # the rest cannot complete it: it starts over, and offset 0 is gone


def test_a_datagram_of_too_many_pieces_is_dropped():
    stack, _ = trusting_stack()
    feed(stack, *(piece(b"p" * ipv4.MIN_FRAGMENT, i * ipv4.MIN_FRAGMENT, more=True)
                  for i in range(ipv4.MAX_FRAGMENTS + 1)))
    assert stack.drops["fragment-too-many"] == 1 and len(stack.reassembler) == 0


def test_tiny_and_empty_fragments_are_dropped_before_they_are_held():
    stack, _ = trusting_stack()
    flood = [piece(b"", 8 * (i + 1), more=True, ident=i & 0xFFFF) for i in range(32_000)]
    flood += [piece(b"t" * 8, 0, more=True), piece(b"u" * (ipv4.MIN_FRAGMENT + 4), 0, more=True)]
    for start in range(0, len(flood), 256):
        stack.receive(flood[start:start + 256], NOW)
    assert stack.drops["fragment-too-small"] == 32_002
    assert len(stack.reassembler) == 0 and stack.reassembler.held_bytes == 0


def test_empty_last_fragments_cost_a_source_its_own_budget_only():
    stack, endpoint = trusting_stack()
    message = udp_message(1600, source=OTHER)
    feed(stack, piece(message[:800], 0, more=True, source=OTHER))
    flood = [piece(b"", 8, more=False, ident=i) for i in range(5000)]  # each opens a datagram
    for start in range(0, len(flood), 256):
        stack.receive(flood[start:start + 256], NOW)
    assert stack.reassembler.held_by(THEM)[0] <= ipv4.MAX_REASSEMBLIES_PER_SOURCE
    assert stack.drops["reassembly-evicted"] == 5000 - ipv4.MAX_REASSEMBLIES_PER_SOURCE
    feed(stack, piece(message[800:], 800, more=False, source=OTHER))
    assert endpoint.pop()[0] == message[udp.HEADER_LEN:]


def test_a_flooding_source_cannot_evict_another_sources_datagram():
    stack, endpoint = trusting_stack()
    message = udp_message(2400, source=OTHER)
    now = NOW
    feed(stack, piece(message[:800], 0, more=True, source=OTHER), now=now)
    junk = b"j" * 1024
    for burst in range(10):  # 10,000 fragments of distinct datagrams over 10 s of the fake clock
        now += 1.0
        stack.receive([piece(junk, 0, more=True, ident=burst * 1000 + i) for i in range(1000)], now)
        datagrams, held = stack.reassembler.held_by(THEM)
        assert datagrams <= ipv4.MAX_REASSEMBLIES_PER_SOURCE and held <= ipv4.MAX_REASSEMBLY_BYTES_PER_SOURCE
    assert stack.reassembler.held_by(OTHER) == (1, 800)
    feed(stack, piece(message[800:1600], 800, more=True, source=OTHER),
         piece(message[1600:], 1600, more=False, source=OTHER), now=now)
    assert endpoint.pop()[0] == message[udp.HEADER_LEN:]
    feed(stack, *(piece(message[i:i + 800], i, more=i < 1600, ident=9, source=OTHER) for i in (0, 800, 1600)),
         now=now)  # and one begun during the flood is not refused for want of room
    assert endpoint.pop()[0] == message[udp.HEADER_LEN:]
    stack.poll(now + ipv4.REASSEMBLY_TIMEOUT)
    assert len(stack.reassembler) == 0 and stack.reassembler.held_bytes == 0  # the flood's leftovers expire


def test_when_the_total_is_full_the_heaviest_source_loses():
    reassembler = ipv4.Reassembler(max_datagrams=8, max_bytes=8 * 1024, max_source_datagrams=6,
                                   max_source_bytes=6 * 1024)

    def fragment(source: int, ident: int) -> ipv4.Datagram:
        return ipv4.parse(piece(b"k" * 1024, 0, more=True, ident=ident, source=source))

    reassembler.add(fragment(OTHER, 1), NOW)
    for n in range(200):  # three sources (one peer's subnet, say), none over its own share, fill the total
        reassembler.add(fragment(ipv4.address("10.80.0.1") + n % 3, n), NOW)
        assert len(reassembler) <= 8 and reassembler.held_bytes <= 8 * 1024
    assert reassembler.held_by(OTHER) == (1, 1024)


def test_an_unexpected_error_drops_one_packet_and_the_next_is_processed(caplog):
    stack, endpoint = trusting_stack()

    def broken(datagram, now):
        raise ZeroDivisionError("a bug in a handler")

    stack._receive_icmp = broken
    ping = ipv4.build(THEM, OURS, ipv4.PROTO_ICMP, b"\x08\x00\xf7\xff\x00\x00\x00\x00")
    query = ipv4.build(THEM, OURS, ipv4.PROTO_UDP, udp_message(20))
    with caplog.at_level(logging.ERROR, "kakuremichi.netstack"):
        feed(stack, ping, query, ping, query)
    assert stack.drops["contained"] == 2 and stack.faults.counts == {"ZeroDivisionError": 2}
    assert endpoint.pop() and endpoint.pop()  # both queries behind the poison got through
    assert len([r for r in caplog.records if r.name == "kakuremichi.netstack"]) == 1  # logged once


def test_a_connection_that_fails_internally_is_closed_and_the_others_go_on(monkeypatch):
    stack = new_stack()
    broken, _, _ = handshake(stack, sport=40000)
    healthy, _, _ = handshake(stack, sport=40001)
    flush = tcp.Connection.flush

    def failing_flush(connection, now):
        if connection is broken:
            raise KeyError("a bug in flush")
        flush(connection, now)

    monkeypatch.setattr(tcp.Connection, "flush", failing_flush)
    broken.send(b"x")
    healthy.send(b"y")
    stack.dirty.update((broken, healthy))
    out = feed(stack)
    assert stack.drops["contained"] == 1 and broken.key not in stack.connections
    assert isinstance(broken.error, OSError) and healthy.key in stack.connections
    assert any(p.endswith(b"y") for p in out)
