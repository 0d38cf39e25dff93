"""The sender's SACK scoreboard (RFC 6675 §3): which ranges above the cumulative ACK the peer reported
holding (RFC 2018), and the questions loss recovery asks of it: how much is SACKed, where the next hole
is, how much is still in the network.

Sequence numbers are the connection's unwrapped ints; blocks from the wire are unwrapped next to
snd_una.
"""

from __future__ import annotations

MAX_RANGES = 32  # a peer reporting more islands than this is not worth tracking byte by byte
_MASK = 0xFFFFFFFF
_HALF = 0x80000000


class Scoreboard:
    """`ranges`: sorted, disjoint [left, right) lists, all above snd_una."""

    __slots__ = ("ranges",)

    def __init__(self) -> None:
        self.ranges: list[list[int]] = []

    def add(self, blocks: tuple[tuple[int, int], ...], una: int, top: int) -> None:
        """Merge the SACK blocks of one ACK; blocks outside [una, top] (stale, D-SACK, bogus) are ignored."""
        ranges = self.ranges
        for left, right in blocks:
            left = una + ((left - una + _HALF) & _MASK) - _HALF
            right = una + ((right - una + _HALF) & _MASK) - _HALF
            if not una <= left < right <= top:
                continue
            i = 0
            while i < len(ranges) and ranges[i][1] < left:
                i += 1
            j = i
            while j < len(ranges) and ranges[j][0] <= right:
                left, right = min(left, ranges[j][0]), max(right, ranges[j][1])
                j += 1
            ranges[i:j] = [[left, right]]
        if len(ranges) > MAX_RANGES:
            del ranges[MAX_RANGES:]

    def acked(self, ack: int) -> None:
        """The cumulative ACK moved to `ack`: forget what lies below it."""
        ranges = self.ranges
        while ranges and ranges[0][1] <= ack:
            ranges.pop(0)
        if ranges and ranges[0][0] < ack:
            ranges[0][0] = ack

    def sacked_bytes(self) -> int:
        return sum(right - left for left, right in self.ranges)

    def covers(self, start: int, end: int) -> bool:
        """Has the peer SACKed all of [start, end)?"""
        return any(left <= start and end <= right for left, right in self.ranges)

    def skip(self, seq: int, mss: int) -> tuple[int, int]:
        """The first byte at or after `seq` the peer has not SACKed, and how much may be sent from there
        (at most `mss`, up to the next SACKed range)."""
        for left, right in self.ranges:
            if seq < left:
                return seq, min(mss, left - seq)
            if seq < right:
                seq = right
        return seq, mss

    def next_hole(self, start: int, una: int, top: int, mss: int) -> tuple[int, int] | None:
        """The first unSACKed [start, end) at or after `start`, at most `mss` long, below the highest
        SACKed byte (or the first segment at `una` when nothing is SACKed) and below `top`."""
        ranges = self.ranges
        limit = ranges[-1][1] if ranges else una + 1
        start, size = self.skip(start, mss)
        if start >= limit or start >= top:
            return None
        return start, min(start + size, top)

    def pipe(self, una: int, top: int, resent: list[list[int]]) -> int:
        """RFC 6675's estimate of bytes in flight: what was sent above the highest SACKed byte, plus the
        holes resent since (`resent`: [start, end, snd_max when resent] lists)."""
        ranges = self.ranges
        pipe = top - max(ranges[-1][1] if ranges else una, una)
        for start, end, _ in resent:
            if end > una:
                pipe += end - max(start, una)
        return pipe

    def clear(self) -> None:
        self.ranges = []
