"""Per-source budgets: what one source address (one WireGuard peer) can make the stack hold or send.

A SYN flood from one source keeps to its share of a listener's SYN queue, and to a rate where the listener
has one; the RSTs, ICMP errors and echo
replies the stack makes up are token-bucketed per source and in total, on the caller's (fake) clock.
"""

from __future__ import annotations

from scapy.layers.inet import ICMP, IP, TCP, UDP

from kakuremichi.buckets import TokenBuckets
from kakuremichi.netstack import ipv4, ratelimit
from kakuremichi.netstack.stack import Stack
from kakuremichi.netstack.tcp import State
from tests.netstack.test_hostile import NOW, OURS, THEM, feed, handshake, new_stack, replies

ATTACKER = "10.70.0.66"


def from_attacker(count: int, layer) -> list[bytes]:
    return [bytes(IP(src=ATTACKER, dst=OURS) / layer(i)) for i in range(count)]


def test_a_syn_flood_from_one_source_cannot_push_out_another_sources_handshake():
    stack = new_stack()
    listener = stack.listeners[(0, 80)]
    (synack,) = replies(feed(stack, IP(src=THEM, dst=OURS) / TCP(sport=40000, dport=80, flags="S", seq=1000)))
    flood = from_attacker(10 * listener.syn_backlog, lambda i: TCP(sport=1024 + i, dport=80, flags="S"))
    for start in range(0, len(flood), 256):
        stack.receive(flood[start:start + 256], NOW)
        assert len(listener.half_open) <= listener.syn_backlog
    assert stack.drops["syn-queue-full"] == len(flood) - listener.syn_backlog + 1
    assert len(listener.half_open_by_source[ipv4.address(ATTACKER)]) == listener.syn_backlog - 1
    ack = IP(src=THEM, dst=OURS) / TCP(sport=40000, dport=80, flags="A", seq=1001, ack=synack[TCP].seq + 1)
    feed(stack, ack)  # the other source's handshake, begun before the flood, completes after it
    assert listener.accept().state == State.ESTABLISHED
    handshake(stack, sport=40001)  # and a new one is not refused


def test_a_listener_with_a_rate_takes_each_sources_new_connections_at_that_rate():
    """The gateway's exit listens so: a tenant opening connections back to back gets its rate, and its
    SYNs past it are dropped (its stack retries them), while another source still gets in at once."""
    stack = Stack([OURS], 1420)
    stack.listen(1080, opens_per_second=10)
    burst = from_attacker(40, lambda i: TCP(sport=2000 + i, dport=1080, flags="S"))
    answered = [p for p in replies(feed(stack, *burst)) if p[TCP].flags == "SA"]
    assert len(answered) == 10 and stack.drops["syn-rate-limited"] == 30
    (other,) = replies(feed(stack, IP(src=THEM, dst=OURS) / TCP(sport=40000, dport=1080, flags="S")))
    assert other[TCP].flags == "SA"
    later = from_attacker(40, lambda i: TCP(sport=3000 + i, dport=1080, flags="S"))
    assert len([p for p in replies(feed(stack, *later, now=NOW + 0.5)) if p[TCP].flags == "SA"]) == 5
    plain = new_stack()  # without a rate, as the agent's listeners (all of whose connections come from its gateways)
    assert len(replies(feed(plain, *from_attacker(40, lambda i: TCP(sport=2000 + i, dport=80, flags="S"))))) == 40


def test_resets_to_closed_ports_are_limited_per_source_and_refill_with_time():
    stack = new_stack()
    out = feed(stack, *from_attacker(1000, lambda i: TCP(sport=1024 + i, dport=81, flags="S")))
    assert len(out) == ratelimit.ANSWER_BURST and all(IP(p)[TCP].flags == "RA" for p in out)
    assert stack.drops["tcp-no-connection"] == 1000
    (reset,) = replies(feed(stack, IP(src=THEM, dst=OURS) / TCP(sport=5, dport=81, flags="S")))
    assert reset.dst == THEM  # the attacker spent its own answers, not the other source's
    later = feed(stack, *from_attacker(1000, lambda i: TCP(sport=1024 + i, dport=81, flags="S")), now=NOW + 1)
    assert len(later) == ratelimit.ANSWERS_PER_SECOND


def test_echo_replies_and_port_unreachables_share_the_sources_budget():
    stack = new_stack()
    pings = from_attacker(500, lambda i: ICMP(type=8, id=1, seq=i))
    probes = from_attacker(500, lambda i: UDP(sport=1, dport=9))
    out = feed(stack, *pings, *probes)
    assert len(out) == ratelimit.ANSWER_BURST and stack.drops["echo-rate-limited"] == 500 - len(out)
    (answer,) = replies(feed(stack, IP(src=THEM, dst=OURS) / ICMP(type=8)))
    assert answer[ICMP].type == 0


def test_many_sources_together_stay_within_the_total():
    stack = new_stack()
    pings = [bytes(IP(src=f"10.71.{n // 250}.{n % 250 + 1}", dst=OURS) / ICMP(type=8)) for n in range(1000)]
    assert len(feed(stack, *pings)) == ratelimit.TOTAL_ANSWERS_PER_SECOND


def test_the_table_of_sources_is_bounded_and_keeps_the_busiest():
    limit = TokenBuckets(1, 1, total_rate=1e9, max_keys=100)
    assert limit.allow(1, 0.0) and not limit.allow(1, 0.0)
    for source in range(2, 10_000):
        limit.allow(source, 0.0)
        limit.allow(1, 0.0)  # heard from all along: never forgotten, so never refilled by forgetting
        assert len(limit) <= 100
    assert not limit.allow(1, 0.5) and limit.allow(1, 1.0)
