"""FairQueue: round-robin by sender with a quantum, bounded per sender and in all; Device.sender keys a
transport message by its peer whatever port it came from."""

from __future__ import annotations

from kakuremichi.wg.fairqueue import FairQueue
from tests.wg.sansio_helpers import A_ADDR, established_pair


def test_each_sender_gets_a_quantum_per_round_whatever_it_queued():
    queue = FairQueue(quantum=4)
    queue.put("hostile", [("hostile", n) for n in range(100)])
    queue.put("legit", [("legit", 0)])
    taken = queue.take(8)
    assert taken == [("hostile", n) for n in range(4)] + [("legit", 0)] + [("hostile", n) for n in range(4, 7)]
    assert len(queue) == 100 - 7


def test_the_next_turn_starts_with_the_senders_this_one_did_not_reach():
    queue = FairQueue(quantum=2)
    for sender in "abc":
        queue.put(sender, [(sender, n) for n in range(4)])
    assert [s for s, _ in queue.take(3)] == ["a", "a", "b"]
    assert [s for s, _ in queue.take(4)] == ["c", "c", "a", "a"]  # b was served (partly): it waits its turn


def test_a_full_sender_queue_drops_its_newest_and_leaves_others_room():
    queue = FairQueue(sender_queue=3, max_waiting=5)
    assert queue.put("flood", [0, 1]) == 0
    assert queue.put("flood", [2, 3, 4]) == 2  # a coalesced run: what fits is kept
    assert queue.dropped == 2 and not queue.full
    assert queue.put("other", [0]) == 0 and queue.put("other", [1]) == 0
    assert queue.full  # the driver stops reading ahead
    assert queue.take(100) == [0, 1, 2, 0, 1] and len(queue) == 0


def test_transport_messages_count_against_their_peer_handshakes_against_their_source():
    pair = established_pair()
    pair.a.send_packet(pair.a_to_b())
    (datagram, _), = pair.a.outgoing
    assert pair.b.sender(datagram, A_ADDR) is pair.b_peer
    assert pair.b.sender(datagram, ("203.0.113.9", 4000)) is pair.b_peer  # another port, same peer
    forged = b"\x04\0\0\0" + bytes(28)  # no session has index 0... almost surely
    assert pair.b.sender(forged, A_ADDR) == A_ADDR
    assert pair.b.sender(b"\x01" + bytes(147), A_ADDR) == A_ADDR
