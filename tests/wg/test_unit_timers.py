"""WireGuard's timers (whitepaper §6, wireguard-go's timers.go) driven by a fake clock."""

from __future__ import annotations

import pytest

from kakuremichi.wg.constants import (
    KEEPALIVE_TIMEOUT,
    MAX_TIMER_HANDSHAKES,
    REJECT_AFTER_TIME,
    REKEY_AFTER_MESSAGES,
    REKEY_AFTER_TIME,
    REKEY_TIMEOUT,
    REKEY_TIMEOUT_JITTER_MAX,
    ZERO_KEYS_AFTER,
)
from kakuremichi.wg.peer import Timer
from tests.wg.sansio_helpers import (
    A_ADDR,
    B_ADDR,
    B_IP,
    INITIATION,
    RESPONSE,
    TRANSPORT,
    established_pair,
    is_keepalive,
    make_pair,
)

EPS = 1e-6


def test_wireguard_go_constants():
    assert (REKEY_AFTER_TIME, REJECT_AFTER_TIME, REKEY_TIMEOUT, KEEPALIVE_TIMEOUT) == (120, 180, 5, 10)
    assert REKEY_AFTER_MESSAGES == 2 ** 60 and MAX_TIMER_HANDSHAKES == 18
    assert ZERO_KEYS_AFTER == 540 and REKEY_TIMEOUT_JITTER_MAX == pytest.approx(0.334)


@pytest.fixture
def pair():
    """A (initiator) and B with a session made at `pair.t0`; B's passive keepalive is due at t0 + 10."""
    return established_pair()


def initiations(pair, by, since):
    return [d for d in pair.net.sent(by, INITIATION) if d.time > since]


# ---------------------------------------------------------------------------------------------- rekey

def test_initiator_rekeys_when_sending_after_rekey_after_time(pair):
    old = pair.a_peer.current
    pair.net.run_until(pair.t0 + REKEY_AFTER_TIME - 1)
    pair.a.send_packet(pair.a_to_b(b"young"))
    pair.net.flush()
    assert initiations(pair, pair.a, pair.t0) == []
    pair.net.run_until(pair.t0 + REKEY_AFTER_TIME + 0.5)
    pair.a.send_packet(pair.a_to_b(b"old"))
    pair.net.flush()
    assert len(initiations(pair, pair.a, pair.t0)) == 1
    # the packet itself still went out on the old session, and the new one now carries traffic
    assert [bytes(p) for p in pair.b.incoming][-1] == pair.a_to_b(b"old")
    assert pair.a_peer.current is not old and pair.a_peer.previous is old
    assert pair.b_peer.current.local_index == pair.a_peer.current.remote_index  # confirmed by A's keepalive
    pair.b.incoming.clear()
    pair.a.send_packet(pair.a_to_b(b"new keys"))
    pair.net.flush()
    assert [bytes(p) for p in pair.b.incoming] == [pair.a_to_b(b"new keys")]


def test_responder_does_not_rekey_on_time_when_sending(pair):
    pair.net.run_until(pair.t0 + REKEY_AFTER_TIME + 5)
    pair.b.send_packet(pair.b_to_a())
    pair.net.flush()
    assert initiations(pair, pair.b, pair.t0) == [] and len(pair.a.incoming) == 1


def test_any_side_rekeys_after_rekey_after_messages(pair):
    """wireguard-go's keepKeyFreshSending: `nonce > RekeyAfterMessages` starts a handshake on either side;
    only the time-based rule is reserved for the initiator."""
    pair.net.run_until(pair.t0 + 6)
    pair.b_peer.current.send_counter = REKEY_AFTER_MESSAGES + 1
    pair.b.send_packet(pair.b_to_a())
    assert [bytes(d)[0] for d, _ in pair.b.outgoing] == [TRANSPORT, INITIATION]


@pytest.mark.parametrize("sender", ["initiator", "responder"])
@pytest.mark.parametrize("age,usable", [(REJECT_AFTER_TIME - 0.5, True), (REJECT_AFTER_TIME, False)])
def test_session_cannot_send_from_reject_after_time(pair, sender, age, usable):
    device, peer, packet = ((pair.a, pair.a_peer, pair.a_to_b()) if sender == "initiator"
                            else (pair.b, pair.b_peer, pair.b_to_a()))
    pair.net.run_until(peer.current.created + age)
    pair.net.drop = lambda d: True
    device.send_packet(packet)
    kinds = [bytes(d)[0] for d, _ in device.outgoing]
    if usable:
        assert kinds[0] == TRANSPORT and not peer.staged
    else:
        assert kinds == [INITIATION] and list(peer.staged) == [packet]


def test_session_cannot_receive_from_reject_after_time(pair):
    pair.a.send_packet(pair.a_to_b(b"1"))
    pair.a.send_packet(pair.a_to_b(b"2"))
    held = [bytes(d) for d, _ in pair.a.outgoing]
    pair.a.outgoing.clear()
    created = pair.b_peer.current.created
    pair.net.run_until(created + REJECT_AFTER_TIME - 0.1)
    pair.b.incoming.clear()
    pair.b.receive_datagram(held[0], A_ADDR)
    assert [bytes(p) for p in pair.b.incoming] == [pair.a_to_b(b"1")]
    pair.net.run_until(created + REJECT_AFTER_TIME)
    before = sum(pair.b.dropped.values())
    pair.b.receive_datagram(held[1], A_ADDR)
    assert len(pair.b.incoming) == 1 and sum(pair.b.dropped.values()) == before + 1


def test_receiving_initiator_rekeys_at_the_last_minute(pair):
    """At REJECT_AFTER_TIME - KEEPALIVE_TIMEOUT - REKEY_TIMEOUT (165 s) an initiator that only receives
    starts a handshake, so the session does not die under a one-way flow."""
    last_minute = REJECT_AFTER_TIME - KEEPALIVE_TIMEOUT - REKEY_TIMEOUT
    assert last_minute == 165
    old = pair.a_peer.current
    pair.net.run_until(pair.t0 + last_minute - 1)
    pair.b.send_packet(pair.b_to_a(b"before"))
    pair.net.flush()
    assert initiations(pair, pair.a, pair.t0) == []
    pair.net.run_until(pair.t0 + last_minute + 1)
    pair.b.send_packet(pair.b_to_a(b"after"))
    pair.net.flush()
    (rekey,) = initiations(pair, pair.a, pair.t0)
    assert rekey.time == pair.t0 + last_minute + 1
    assert pair.a_peer.current is not old and pair.a_peer.current.created == rekey.time
    assert initiations(pair, pair.b, pair.t0) == []  # the responder never does this


# ---------------------------------------------------------------------------------------------- keepalives

def test_passive_keepalive_after_receiving_data_with_nothing_to_send(pair):
    pair.net.run_until(pair.t0 + KEEPALIVE_TIMEOUT - 0.01)
    assert pair.net.sent(pair.b, TRANSPORT) == []
    pair.net.run_until(pair.t0 + KEEPALIVE_TIMEOUT)
    (keepalive,) = pair.net.sent(pair.b, TRANSPORT)
    assert is_keepalive(keepalive.data) and keepalive.time == pair.t0 + KEEPALIVE_TIMEOUT
    pair.net.run_until(pair.t0 + 100)
    assert len(pair.net.sent(pair.b, TRANSPORT)) == 1  # nothing more while nothing more arrives
    assert pair.net.sent(pair.a, keepalive=True) == []  # receiving a keepalive asks for none back


def test_no_passive_keepalive_when_data_went_back(pair):
    pair.net.run_until(pair.t0 + 5)
    pair.b.send_packet(pair.b_to_a())
    pair.net.run_until(pair.t0 + 30)
    assert [is_keepalive(d.data) for d in pair.net.sent(pair.b, TRANSPORT)] == [False]
    # and A, which received that data, answers it with its own keepalive ten seconds later
    (a_keepalive,) = pair.net.sent(pair.a, keepalive=True)
    assert a_keepalive.time == pair.t0 + 5 + KEEPALIVE_TIMEOUT


def test_data_during_a_pending_keepalive_asks_for_another(pair):
    pair.net.run_until(pair.t0 + 3)
    pair.a.send_packet(pair.a_to_b())
    pair.net.run_until(pair.t0 + 60)
    times = [d.time - pair.t0 for d in pair.net.sent(pair.b, keepalive=True)]
    assert times == [KEEPALIVE_TIMEOUT, 2 * KEEPALIVE_TIMEOUT]


def test_new_handshake_when_sent_data_gets_no_reply():
    pair = make_pair()
    t0 = pair.clock.now
    pair.a.send_packet(pair.a_to_b())
    pair.net.flush()
    pair.net.drop = lambda d: d.sender is pair.b  # B's keepalive (and anything else) never arrives
    pair.net.run_until(t0 + KEEPALIVE_TIMEOUT + REKEY_TIMEOUT - EPS)
    assert initiations(pair, pair.a, t0) == []
    pair.net.run_until(t0 + KEEPALIVE_TIMEOUT + REKEY_TIMEOUT + REKEY_TIMEOUT_JITTER_MAX)
    (again,) = initiations(pair, pair.a, t0)
    assert t0 + 15 <= again.time <= t0 + 15 + REKEY_TIMEOUT_JITTER_MAX


def test_no_new_handshake_while_replies_arrive(pair):
    for second in range(1, 60):
        pair.net.run_until(pair.t0 + second)
        pair.a.send_packet(pair.a_to_b())  # one-way data: only B's keepalives come back
    pair.net.run_until(pair.t0 + 80)
    assert initiations(pair, pair.a, pair.t0) == []
    assert pair.net.sent(pair.b, keepalive=True)


def test_persistent_keepalive_every_interval_while_idle(pair):
    pair.net.run_until(pair.t0 + 20)  # past B's passive keepalive
    t1 = pair.clock.now
    pair.a.add_peer(pair.b.public_key, endpoint=B_ADDR, allowed_ips=[f"{B_IP}/32"], persistent_keepalive=25)
    pair.net.flush()
    pair.net.run_until(t1 + 90)
    times = [d.time - t1 for d in pair.net.sent(pair.a, keepalive=True)]
    assert times == [0, 25, 50, 75]  # one at once (opening NAT mappings), then every 25 s


def test_persistent_keepalive_waits_for_idleness(pair):
    pair.net.run_until(pair.t0 + 20)
    t1 = pair.clock.now
    pair.a.add_peer(pair.b.public_key, endpoint=B_ADDR, allowed_ips=[f"{B_IP}/32"], persistent_keepalive=25)
    pair.net.run_until(t1 + 10)
    pair.a.send_packet(pair.a_to_b())  # traffic pushes the next keepalive back
    pair.net.run_until(t1 + 40)
    assert [d.time - t1 for d in pair.net.sent(pair.a, keepalive=True)] == [0]
    pair.net.run_until(t1 + 50)
    # B's passive keepalive for that data reached A at t1 + 20: the next is due 25 s later
    assert [d.time - t1 for d in pair.net.sent(pair.a, keepalive=True)] == [0, 45]


def test_no_keepalives_at_all_without_persistent_keepalive(pair):
    pair.net.run_until(pair.t0 + 110)
    assert pair.net.sent(pair.a, keepalive=True) == []
    assert len(pair.net.sent(pair.b, keepalive=True)) == 1  # just the passive one


def test_persistent_keepalives_keep_an_idle_initiators_key_fresh(pair):
    """wireguard-go calls keepKeyFreshSending after every send, keepalives included: an idle initiator
    with persistent keepalive rekeys after REKEY_AFTER_TIME instead of letting the session expire."""
    pair.net.run_until(pair.t0 + 20)
    pair.a.add_peer(pair.b.public_key, endpoint=B_ADDR, allowed_ips=[f"{B_IP}/32"], persistent_keepalive=25)
    pair.net.run_until(pair.t0 + REKEY_AFTER_TIME + 30)  # keepalives at 20, 45, ..., 120, 145
    (rekey,) = initiations(pair, pair.a, pair.t0)
    assert pair.t0 + REKEY_AFTER_TIME < rekey.time < pair.t0 + REJECT_AFTER_TIME


# ---------------------------------------------------------------------------------------------- retries

def test_handshake_retransmits_with_jitter_then_gives_up():
    pair = make_pair()
    pair.net.drop = lambda d: True  # B is unreachable
    t0 = pair.clock.now
    packet = pair.a_to_b(b"never delivered")
    pair.a.send_packet(packet)
    pair.net.run_until(t0 + 90)
    assert list(pair.a_peer.staged) == [packet]  # still trying
    pair.net.run_until(t0 + 200)
    sent = pair.net.sent(pair.a, INITIATION)
    assert len(sent) == MAX_TIMER_HANDSHAKES + 2  # the first, then 19 retries, as wireguard-go
    gaps = [b.time - a.time for a, b in zip(sent, sent[1:])]
    assert all(REKEY_TIMEOUT <= g <= REKEY_TIMEOUT + REKEY_TIMEOUT_JITTER_MAX for g in gaps), gaps
    assert len({round(g, 9) for g in gaps}) > 1  # jittered, not a fixed period
    assert len({d.data[4:8] for d in sent}) == len(sent)  # a new sender index each time
    assert sent[-1].time - t0 >= REKEY_TIMEOUT * (MAX_TIMER_HANDSHAKES + 1)
    assert not pair.a_peer.staged  # given up: staged packets are dropped

    pair.net.run_until(t0 + 2000)
    assert len(pair.net.sent(pair.a, INITIATION)) == MAX_TIMER_HANDSHAKES + 2  # and no more attempts
    assert pair.a.next_deadline() is None

    # a response to the last attempt no longer finds a handshake to complete
    pair.net.deliver(sent[-1])
    ((response, _),) = pair.b.outgoing
    pair.a.receive_datagram(bytes(response), B_ADDR)
    assert pair.a.dropped["unknown_index"] == 1 and pair.a_peer.current is None

    # new traffic starts over
    pair.a.send_packet(packet)
    assert len(pair.net.sent(pair.a, INITIATION)) + len(pair.a.outgoing) == MAX_TIMER_HANDSHAKES + 3


def test_a_late_response_to_a_retried_initiation_completes_the_handshake():
    pair = make_pair()
    t0 = pair.clock.now
    pair.net.drop = lambda d: d.kind == RESPONSE and len(pair.net.sent(pair.b, RESPONSE)) <= 2  # two lost
    pair.a.send_packet(pair.a_to_b(b"patience"))
    pair.net.run_until(t0 + 30)
    assert len(pair.net.sent(pair.a, INITIATION)) == 3
    assert [bytes(p) for p in pair.b.incoming] == [pair.a_to_b(b"patience")]
    assert pair.a.next_deadline() is not None and pair.a_peer.deadlines[Timer.RETRANSMIT_HANDSHAKE] is None


def test_keys_are_zeroed_after_three_times_reject_after_time(pair):
    pair.a.send_packet(pair.a_to_b(b"held"))
    ((held, _),) = pair.a.outgoing
    pair.a.outgoing.clear()
    pair.net.run_until(pair.t0 + ZERO_KEYS_AFTER - 0.1)
    assert pair.a_peer.current is not None and pair.b_peer.current is not None
    pair.net.run_until(pair.t0 + ZERO_KEYS_AFTER)
    for peer in (pair.a_peer, pair.b_peer):
        assert (peer.current, peer.previous, peer.next, peer.handshake) == (None, None, None, None)
    assert pair.a._index == {} and pair.b._index == {}
    pair.b.receive_datagram(bytes(held), A_ADDR)
    assert pair.b.dropped["unknown_index"] == 1 and pair.b.incoming == []
    # the tunnel still comes back on demand
    pair.a.send_packet(pair.a_to_b(b"again"))
    pair.net.flush()
    assert [bytes(p) for p in pair.b.incoming] == [pair.a_to_b(b"again")]


def test_zeroing_is_pushed_back_by_each_new_session(pair):
    pair.net.run_until(pair.t0 + 300)
    pair.a.send_packet(pair.a_to_b())  # older than REKEY_AFTER_TIME: rekeys at t0 + 300
    pair.net.flush()
    pair.net.run_until(pair.t0 + ZERO_KEYS_AFTER + 1)
    assert pair.a_peer.current is not None and pair.b_peer.current is not None
    pair.net.run_until(pair.t0 + 300 + ZERO_KEYS_AFTER)
    assert pair.a_peer.current is None and pair.b_peer.current is None
