"""OutOfOrder: the receiver's queue of data above rcv_nxt, drained when the hole fills, reported as SACK."""

from __future__ import annotations

import struct

from kakuremichi.netstack.out_of_order import MAX_RUNS, OutOfOrder


def _queue(*pieces: tuple[int, bytes]) -> OutOfOrder:
    queue = OutOfOrder()
    for seq, data in pieces:
        queue.add(seq, memoryview(data))
    return queue


def test_overlapping_and_touching_pieces_merge_into_one_run_keeping_every_byte():
    queue = _queue((110, b"klmno"), (100, b"abcde"), (105, b"fghij"), (113, b"nopq"))
    assert [(start, bytes(data)) for start, data in queue.runs] == [(100, b"abcdefghijklmnopq")]


def test_runs_stay_sorted_and_the_last_changed_is_remembered():
    queue = _queue((300, b"x"), (100, b"y"), (200, b"z"))
    assert [start for start, _ in queue.runs] == [100, 200, 300] and queue.last == 200


def test_draining_appends_what_follows_without_a_hole_and_stops_at_the_next():
    queue = _queue((98, b"__abc"), (103, b"def"), (200, b"later"))
    buffer = bytearray(b"head")
    assert queue.drain_into(buffer, 100) == 106
    assert buffer == b"headabcdef" and [start for start, _ in queue.runs] == [200]
    assert queue.drain_into(buffer, 106) == 106 and buffer == b"headabcdef"


def test_a_run_already_covered_by_rcv_nxt_is_dropped_without_data():
    queue = _queue((100, b"abc"))
    buffer = bytearray()
    assert queue.drain_into(buffer, 200) == 200 and buffer == b"" and queue.runs == []


def test_too_many_islands_are_not_kept_but_growing_one_still_is():
    queue = _queue(*((1000 + 10 * i, b"x") for i in range(MAX_RUNS)))
    queue.add(5000, memoryview(b"new island"))
    assert len(queue.runs) == MAX_RUNS and queue.runs[-1][0] != 5000
    queue.add(1001, memoryview(b"y"))
    assert bytes(queue.runs[0][1]) == b"xy"


def test_the_sack_option_lists_the_latest_run_first_and_at_most_four():
    queue = _queue((100, b"a"), (200, b"b"), (300, b"c"), (400, b"d"), (500, b"e"), (300, b"cc"))
    option = queue.sack_option()
    assert option[:4] == b"\x01\x01\x05\x22"
    edges = struct.unpack("!8I", option[4:])
    assert edges[:2] == (300, 302) and len(edges) == 8


def test_sack_edges_are_sent_modulo_two_to_the_32():
    queue = _queue(((1 << 32) + 10, b"abc"))
    assert struct.unpack("!2I", queue.sack_option()[4:]) == (10, 13)


def test_the_next_segment_behind_a_hole_grows_its_run_in_place():
    queue = _queue((100, b"abc"), (200, b"xyz"))
    run = queue.runs[0][1]
    queue.add(103, memoryview(b"defg"))
    queue.add(105, memoryview(b"fgh"))  # overlapping the tail: only what is new is added
    assert queue.runs[0] == [100, b"abcdefgh"] and queue.runs[0][1] is run and queue.last == 100
    queue.add(108, memoryview(b"!" * 92))  # now touching the next run: the two merge
    assert [start for start, _ in queue.runs] == [100] and queue.runs[0][1] == b"abcdefgh" + b"!" * 92 + b"xyz"
