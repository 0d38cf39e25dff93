"""Scoreboard: the sender's record of SACKed ranges and the holes and flight size loss recovery reads from it."""

from __future__ import annotations

from kakuremichi.netstack.scoreboard import MAX_RANGES, Scoreboard

MSS = 1000


def _board(*ranges: tuple[int, int]) -> Scoreboard:
    board = Scoreboard()
    board.add(ranges, 0, 100_000)
    return board


def test_blocks_merge_when_they_overlap_or_touch_and_stay_sorted():
    board = _board((5000, 6000), (1000, 2000), (2000, 3000), (5500, 7000))
    assert board.ranges == [[1000, 3000], [5000, 7000]]
    assert board.sacked_bytes() == 4000


def test_blocks_below_the_ack_above_what_was_sent_or_empty_are_ignored():
    board = Scoreboard()
    board.add(((500, 1500), (9000, 12_000), (3000, 3000), (2000, 3000)), 1000, 10_000)
    assert board.ranges == [[2000, 3000]]


def test_blocks_from_the_wire_are_unwrapped_next_to_snd_una():
    una = (1 << 32) - 1000  # the sequence space wraps inside the flight
    board = Scoreboard()
    board.add(((500, 1500),), una, una + 10_000)
    assert board.ranges == [[(1 << 32) + 500, (1 << 32) + 1500]]


def test_the_number_of_ranges_is_bounded():
    board = _board(*((i * 100, i * 100 + 10) for i in range(2 * MAX_RANGES)))
    assert len(board.ranges) == MAX_RANGES


def test_a_cumulative_ack_trims_the_ranges_below_it():
    board = _board((1000, 2000), (3000, 4000))
    board.acked(3500)
    assert board.ranges == [[3500, 4000]]
    board.acked(4000)
    assert board.ranges == []


def test_covers_and_skip():
    board = _board((2000, 3000), (4000, 5000))
    assert board.covers(2000, 3000) and board.covers(4200, 4800) and not board.covers(2500, 3500)
    assert board.skip(1500, MSS) == (1500, 500)  # up to the SACKed range
    assert board.skip(2000, MSS) == (3000, MSS)
    assert board.skip(2500, MSS) == (3000, MSS)
    assert board.skip(4500, MSS) == (5000, MSS)


def test_next_hole_is_the_first_unsacked_segment_below_the_highest_sack():
    board = _board((3000, 4000), (6000, 7000))
    assert board.next_hole(1000, 1000, 10_000, MSS) == (1000, 2000)
    assert board.next_hole(2500, 1000, 10_000, MSS) == (2500, 3000)  # cut at the SACKed range
    assert board.next_hole(3000, 1000, 10_000, MSS) == (4000, 5000)
    assert board.next_hole(7000, 1000, 10_000, MSS) is None  # above the highest SACK nothing is lost yet
    assert board.next_hole(1000, 1000, 1500, MSS) == (1000, 1500)  # never past what was sent


def test_without_sacks_only_the_first_segment_is_a_hole():
    board = Scoreboard()
    assert board.next_hole(1000, 1000, 10_000, MSS) == (1000, 2000)
    assert board.next_hole(2000, 1000, 10_000, MSS) is None


def test_pipe_counts_what_is_above_the_highest_sack_plus_holes_resent():
    board = _board((3000, 6000))
    assert board.pipe(1000, 10_000, []) == 4000
    assert board.pipe(1000, 10_000, [[1000, 2000, 10_000], [2000, 3000, 10_000]]) == 6000
    assert board.pipe(1500, 10_000, [[1000, 2000, 10_000]]) == 4500  # only the part above snd_una
