"""DoS protection: mac2, cookie replies under load, cookie lifetimes and per-source rate limiting."""

from __future__ import annotations

import os
import struct

from kakuremichi.wg.constants import UNDER_LOAD_HOLD
from kakuremichi.wg.cookie import COOKIE_REFRESH_TIME, CookieChecker, CookieJar
from kakuremichi.wg.ratelimit import BURST, MAX_ADDRESSES, PACKETS_PER_SECOND, RateLimiter
from tests.wg.sansio_helpers import (
    A_ADDR,
    B_ADDR,
    COOKIE_REPLY,
    INITIATION,
    RESPONSE,
    FakeClock,
    craft_initiation,
    mac16,
    make_pair,
    open_cookie_reply,
    stamp,
    tai64n,
)

ATTACKER = ("203.0.113.7", 40000)


def under_load_pair(threshold: int = 0):
    """B treats more than `threshold` handshake messages a second as load (0: always under load)."""
    return make_pair(b_kwargs={"handshakes_per_second_under_load": threshold})


def test_under_load_an_initiation_gets_a_cookie_reply_then_mac2_gets_a_response():
    pair = under_load_pair()
    t0 = pair.clock.now
    packet = pair.a_to_b(b"through the cookie")
    pair.a.send_packet(packet)
    pair.net.flush()
    (first,) = pair.net.sent(pair.a, INITIATION)
    (reply,) = pair.net.sent(pair.b, COOKIE_REPLY)
    assert len(reply.data) == 64 and reply.dst == A_ADDR
    assert pair.net.sent(pair.b, RESPONSE) == [] and pair.b_peer.next is None  # no crypto work spent
    assert pair.b.dropped["cookie_sent"] == 1
    cookie = open_cookie_reply(reply.data, pair.b.public_key, first.data[116:132])
    assert len(cookie) == 16

    pair.net.run_until(t0 + 5.4)  # A's retransmission carries mac2 made with that cookie
    second = pair.net.sent(pair.a, INITIATION)[1]
    assert second.data[132:148] == mac16(cookie, second.data[:132])
    assert len(pair.net.sent(pair.b, RESPONSE)) == 1 and len(pair.net.sent(pair.b, COOKIE_REPLY)) == 1
    assert [bytes(p) for p in pair.b.incoming] == [packet]


def test_cookie_reply_with_a_bad_tag_is_dropped_and_no_cookie_is_used():
    pair = under_load_pair()
    pair.net.drop = lambda d: d.kind == COOKIE_REPLY
    pair.a.send_packet(pair.a_to_b())
    pair.net.flush()
    (reply,) = pair.net.sent(pair.b, COOKIE_REPLY)
    for offset in (8, 40, 63):  # nonce, encrypted cookie, tag
        forged = bytearray(reply.data)
        forged[offset] ^= 1
        pair.a.receive_datagram(bytes(forged), B_ADDR)
    assert pair.a.dropped["auth"] == 3
    pair.net.drop = None
    pair.net.advance(5.4)
    retry = pair.net.sent(pair.a, INITIATION)[1]
    assert retry.data[132:148] == bytes(16)  # nothing was stored from the forgeries
    assert pair.net.sent(pair.b, RESPONSE) == []


def test_cookie_reply_for_a_message_we_did_not_send_is_dropped():
    pair = under_load_pair()
    pair.net.drop = lambda d: d.kind == COOKIE_REPLY
    pair.a.send_packet(pair.a_to_b())
    pair.net.flush()
    (reply,) = pair.net.sent(pair.b, COOKIE_REPLY)
    pair.net.advance(5.4)  # A re-initiated: the reply's AAD (the old mac1) no longer matches, nor its index
    pair.a.receive_datagram(reply.data, B_ADDR)
    assert pair.a.dropped["unknown_index"] == 1


def test_mac2_is_bound_to_the_source_address():
    pair = under_load_pair()
    pair.net.drop = lambda d: d.kind == INITIATION and len(pair.net.sent(pair.a, INITIATION)) > 1
    pair.a.send_packet(pair.a_to_b())
    pair.net.advance(5.4)
    retry = pair.net.sent(pair.a, INITIATION)[1]
    pair.net.deliver(retry, src=("192.0.2.99", 51820))  # same bytes, another address: the cookie is not its
    assert [bytes(d)[0] for d, _ in pair.b.outgoing] == [COOKIE_REPLY]
    pair.b.outgoing.clear()
    pair.net.deliver(retry)
    assert [bytes(d)[0] for d, _ in pair.b.outgoing] == [RESPONSE]


def test_load_threshold_and_hold_time():
    """More than `handshakes_per_second_under_load` valid-mac1 handshake messages in a second puts the
    device under load for UNDER_LOAD_HOLD; below it, no cookies are asked for."""
    pair = under_load_pair(threshold=3)
    junk = [stamp(struct.pack("<II", INITIATION, i) + os.urandom(140), pair.b.public_key) for i in range(4)]
    for message in junk[:3]:
        pair.b.receive_datagram(message, ATTACKER)
    assert pair.b.outgoing == [] and pair.b.dropped["auth"] == 3  # processed (and found forged)
    pair.b.receive_datagram(junk[3], ATTACKER)
    assert [bytes(d)[0] for d, _ in pair.b.outgoing] == [COOKIE_REPLY]  # the fourth tips it over
    pair.b.outgoing.clear()

    pair.clock.advance(UNDER_LOAD_HOLD / 2)  # still under load: the legitimate peer must show a cookie
    pair.a.send_packet(pair.a_to_b())
    pair.net.flush()
    assert len(pair.net.sent(pair.b, COOKIE_REPLY)) == 1 and pair.b_peer.next is None

    pair.clock.advance(UNDER_LOAD_HOLD + 1)  # quiet again
    pair.b.receive_datagram(junk[0], ATTACKER)
    assert pair.b.outgoing == []


def test_mac1_invalid_messages_do_not_count_towards_load():
    pair = under_load_pair(threshold=3)
    bogus = struct.pack("<II", INITIATION, 1) + bytes(140)
    for _ in range(50):
        pair.b.receive_datagram(bogus, ATTACKER)
    assert pair.b.dropped["mac1"] == 50
    pair.a.send_packet(pair.a_to_b())
    pair.net.flush()
    assert pair.net.sent(pair.b, COOKIE_REPLY) == [] and len(pair.net.sent(pair.b, RESPONSE)) == 1


def test_received_cookie_expires_after_two_minutes():
    pair = under_load_pair()
    pair.net.drop = lambda d: d.kind == INITIATION and len(pair.net.sent(pair.a, INITIATION)) > 1
    t0 = pair.clock.now
    pair.a.send_packet(pair.a_to_b())
    pair.net.flush()
    assert len(pair.net.sent(pair.b, COOKIE_REPLY)) == 1  # the cookie arrives at t0
    pair.net.run_until(t0 + 110)  # A retried (with mac2) and gave up, every retry lost
    pair.a.send_packet(pair.a_to_b())  # and tries again, across the cookie's expiry
    pair.net.run_until(t0 + 160)
    retries = pair.net.sent(pair.a, INITIATION)[1:]
    with_cookie = [d for d in retries if d.time - t0 < COOKIE_REFRESH_TIME]
    expired = [d for d in retries if d.time - t0 > COOKIE_REFRESH_TIME]
    assert with_cookie and expired
    assert all(d.data[132:148] != bytes(16) for d in with_cookie)
    assert all(d.data[132:148] == bytes(16) for d in expired)


def test_per_source_rate_limit_under_load():
    pair = under_load_pair()
    stranger = bytes(31) + b"\x40"  # a key B does not know: admitted messages end as unknown_peer

    def jar_for(source):
        jar = CookieJar(pair.b.public_key, pair.clock)
        first = bytearray(craft_initiation(stranger, pair.b.public_key, tai64n(1), 1).message)
        jar.stamp(first)
        pair.b.receive_datagram(bytes(first), source)
        ((reply, _),) = pair.b.outgoing
        pair.b.outgoing.clear()
        jar.consume_reply(reply)
        return jar

    def burst(jar, source, n):
        for i in range(n):
            msg = bytearray(craft_initiation(stranger, pair.b.public_key, tai64n(100 + i), i).message)
            jar.stamp(msg)
            pair.b.receive_datagram(bytes(msg), source)

    jar1 = jar_for(ATTACKER)  # its cookie request took one of the source's tokens
    burst(jar1, ATTACKER, BURST + 3)
    assert pair.b.dropped["rate_limited"] == 4
    assert pair.b.dropped["unknown_peer"] == BURST - 1  # the admitted ones were fully processed
    assert pair.b.outgoing == []

    other = ("203.0.113.8", 40000)  # another address is not starved by the first
    burst(jar_for(other), other, 2)
    assert pair.b.dropped["unknown_peer"] == BURST + 1 and pair.b.dropped["rate_limited"] == 4

    pair.clock.advance(1.5 / PACKETS_PER_SECOND)  # tokens refill at 20 a second
    burst(jar1, ATTACKER, 2)
    assert pair.b.dropped["unknown_peer"] == BURST + 2 and pair.b.dropped["rate_limited"] == 5


def test_a_source_flooding_without_cookies_gets_no_more_cookie_replies_than_its_rate():
    """Past its rate a source's handshake messages cost mac1 only: no cookie reply is encrypted or sent."""
    pair = under_load_pair()
    stranger = bytes(31) + b"\x40"
    for i in range(100):
        msg = bytearray(craft_initiation(stranger, pair.b.public_key, tai64n(100 + i), i).message)
        CookieJar(pair.b.public_key, pair.clock).stamp(msg)
        pair.b.receive_datagram(bytes(msg), ATTACKER)
    assert len(pair.b.outgoing) == BURST == pair.b.dropped["cookie_sent"]
    assert pair.b.dropped["rate_limited"] == 100 - BURST


# ---------------------------------------------------------------------------------------------- the pieces

def test_cookie_checker_rotates_its_secret_every_two_minutes():
    clock = FakeClock()
    public = bytes(range(32))
    checker = CookieChecker(public, clock)
    jar = CookieJar(public, clock)
    source = bytes([192, 0, 2, 1, 0xCA, 0x6C])

    def cookie_now() -> bytes:
        msg = bytearray(148)
        msg[0] = INITIATION
        jar.stamp(msg)
        reply = checker.create_reply(bytes(msg), source)
        return open_cookie_reply(reply, public, bytes(msg[116:132]))

    first = cookie_now()
    clock.advance(COOKIE_REFRESH_TIME - 1)
    assert cookie_now() == first
    clock.advance(2)
    assert cookie_now() != first


def test_cookie_checker_mac2_validity_window():
    clock = FakeClock()
    public = bytes(range(32))
    checker = CookieChecker(public, clock)
    jar = CookieJar(public, clock)
    source = bytes(6)
    msg = bytearray(148)
    msg[0] = INITIATION
    assert not checker.mac2_valid(bytes(msg), source)  # no secret yet: nothing can be valid
    jar.stamp(msg)
    jar.consume_reply(checker.create_reply(bytes(msg), source))
    jar.stamp(msg)
    assert checker.mac2_valid(bytes(msg), source)
    assert not checker.mac2_valid(bytes(msg), bytes(5) + b"\x01")
    clock.advance(COOKIE_REFRESH_TIME + 1)
    assert not checker.mac2_valid(bytes(msg), source)  # the secret that made it is too old


def test_mac1_check():
    clock = FakeClock()
    public = bytes(range(32))
    checker = CookieChecker(public, clock)
    msg = bytearray(92)
    msg[0] = RESPONSE
    CookieJar(public, clock).stamp(msg)
    assert checker.mac1_valid(bytes(msg))
    assert bytes(msg) == stamp(msg, public)  # the same mac1 as the whitepaper's definition
    assert not CookieChecker(bytes(32 * [1]), clock).mac1_valid(bytes(msg))
    msg[5] ^= 1
    assert not checker.mac1_valid(bytes(msg))


def test_rate_limiter_buckets():
    clock = FakeClock()
    limiter = RateLimiter(clock)
    assert [limiter.allow("a") for _ in range(BURST + 2)] == [True] * BURST + [False, False]
    assert limiter.allow("b")
    clock.advance(1.5 / PACKETS_PER_SECOND)  # one and a half tokens back
    assert limiter.allow("a") and not limiter.allow("a")
    clock.advance(10)
    assert [limiter.allow("a") for _ in range(BURST + 1)] == [True] * BURST + [False]  # capped at BURST


def test_rate_limiter_remembers_a_bounded_number_of_addresses():
    """Forged source addresses within one second used to add a bucket each until the next clean-up."""
    limiter = RateLimiter(FakeClock())
    for n in range(3 * MAX_ADDRESSES):
        limiter.allow(f"198.18.{n // 256 % 256}.{n % 256}:{n}")
    assert len(limiter) == MAX_ADDRESSES


def test_an_initiator_under_load_asks_the_responder_for_a_cookie():
    """Cookie replies also answer handshake *responses*: then they are addressed to the responder's new
    session index, and the responder must find its peer through that session."""
    pair = make_pair(a_kwargs={"handshakes_per_second_under_load": 0})
    t0 = pair.clock.now
    pair.a.send_packet(pair.a_to_b(b"eventually"))
    pair.net.flush()
    (reply,) = pair.net.sent(pair.a, COOKIE_REPLY)
    (first_response,) = pair.net.sent(pair.b, RESPONSE)
    assert struct.unpack_from("<I", reply.data, 4)[0] == struct.unpack_from("<I", first_response.data, 4)[0]
    assert pair.b.dropped["auth"] == 0 and pair.b.dropped["unknown_index"] == 0  # B took the cookie
    assert pair.a_peer.current is None
    pair.net.run_until(t0 + 5.4)  # A retries; B's new response carries mac2 and gets through
    second_response = pair.net.sent(pair.b, RESPONSE)[1]
    assert second_response.data[76:92] != bytes(16)
    assert pair.a_peer.current is not None
    assert [bytes(p) for p in pair.b.incoming] == [pair.a_to_b(b"eventually")]
