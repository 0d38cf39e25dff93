"""The receiver's out-of-order queue: TCP data that arrived above the next expected byte, held as sorted,
disjoint runs until the hole below them fills, and the SACK blocks (RFC 2018) that report them.

Sequence numbers are the connection's unwrapped ints; the SACK option carries them modulo 2**32.
"""

from __future__ import annotations

import struct

MAX_RUNS = 64  # beyond it new islands are dropped: the sender retransmits them
_NOP_NOP_SACK = b"\x01\x01\x05"
_MASK = 0xFFFFFFFF


class OutOfOrder:
    """`runs` is a sorted list of disjoint [start, bytearray]; `last` the start of the run changed last."""

    __slots__ = ("runs", "last")

    def __init__(self) -> None:
        self.runs: list[list] = []
        self.last: int | None = None

    def add(self, seq: int, payload: memoryview) -> None:
        """Keep `payload` (starting at `seq`), merged with every run it overlaps or touches."""
        end = seq + len(payload)
        runs = self.runs
        i = 0
        while i < len(runs) and runs[i][0] + len(runs[i][1]) < seq:
            i += 1
        if i < len(runs) and runs[i][0] <= seq and (i + 1 == len(runs) or runs[i + 1][0] > end):
            # The usual case behind a hole: the next segment of the run it extends (or a duplicate). Grown in
            # place: rebuilding a run a window long for each segment cost a copy of the run per segment.
            run_start, run = runs[i]
            run_end = run_start + len(run)
            if end > run_end:
                run += payload[run_end - seq:]
            self.last = run_start
            return
        j = i
        start, data = seq, bytearray(payload)
        while j < len(runs) and runs[j][0] <= end:
            run_start, run = runs[j]
            run_end = run_start + len(run)
            if run_start < start:
                data[0:0] = run[:start - run_start]
                start = run_start
            if run_end > end:
                data += run[end - run_start:]
                end = run_end
            j += 1
        if j - i == 0 and len(runs) >= MAX_RUNS:
            return  # too fragmented to keep
        runs[i:j] = [[start, data]]
        self.last = start

    def drain_into(self, buffer, rcv_nxt: int) -> int:
        """Append to `buffer` what now follows `rcv_nxt` without a hole; returns the new rcv_nxt."""
        runs = self.runs
        while runs and runs[0][0] <= rcv_nxt:
            start, data = runs.pop(0)
            skip = rcv_nxt - start
            if skip < len(data):
                buffer += memoryview(data)[skip:]
                rcv_nxt = start + len(data)
        return rcv_nxt

    def sack_option(self) -> bytes:
        """The SACK option for up to four runs, the most recently changed first (RFC 2018 §4)."""
        last = self.last
        edges = []
        for start, data in sorted(self.runs, key=lambda run: run[0] != last)[:4]:
            edges += ((start & _MASK), ((start + len(data)) & _MASK))
        return _NOP_NOP_SACK + bytes((2 + 4 * len(edges),)) + struct.pack(f"!{len(edges)}I", *edges)

    def clear(self) -> None:
        self.runs = []
