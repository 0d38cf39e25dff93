"""The Internet checksum (RFC 1071) computed with big-integer arithmetic instead of a loop over words.

Because 2**16 ≡ 1 (mod 0xFFFF), the one's-complement sum of a buffer's 16-bit big-endian words is the
buffer read as one big integer, modulo 0xFFFF. `int.from_bytes` and `%` run in C, so a 1500-byte packet
costs a couple of microseconds. Partial sums of several pieces (pseudo-header, header, payload) simply add
up as integers as long as each piece starts on an even offset; fold once at the end.

`%` on a big integer divides it one 30-bit digit at a time, which for a full-size segment costs twice as
much as reading it; splitting the sum in halves at a multiple of 16 bits (2**16k ≡ 1 as well) and adding
them shrinks it with two shifts first, a third cheaper.
"""

from __future__ import annotations

from functools import lru_cache

# A sum known to be small (a header's words) may be finished inline as `FOLD - total % FOLD`, and checked as
# `total % FOLD == 0`: what `finish` and `verify` do, without their two calls for every packet.
FOLD = 0xFFFF


def partial(data: bytes | bytearray | memoryview) -> int:
    """An unfolded partial sum of `data`, to add to others; pads an odd length with a zero byte."""
    value = int.from_bytes(data, "big")
    return value << 8 if len(data) & 1 else value


@lru_cache(maxsize=128)
def _low_bits(count: int) -> int:
    return (1 << count) - 1


def _reduce(total: int) -> int:
    """`total` shrunk below 4096 bits without changing it modulo 0xFFFF (below that, `%` is cheaper)."""
    while total >> 4096:
        half = (total.bit_length() >> 5) << 4
        total = (total >> half) + (total & _low_bits(half))
    return total


def finish(total: int) -> int:
    """The checksum field for an unfolded sum: never 0, which UDP reserves for "no checksum"."""
    return FOLD - _reduce(total) % FOLD


def checksum(data: bytes | bytearray | memoryview) -> int:
    """The RFC 1071 checksum of `data`."""
    return finish(partial(data))


def verify(total: int) -> bool:
    """True if an unfolded sum that includes the transmitted checksum field adds up to all ones."""
    return _reduce(total) % FOLD == 0


def pseudo_header(source: int, destination: int, protocol: int, length: int) -> int:
    """The IPv4 pseudo-header's partial sum; addresses are 32-bit ints (their two words fold the same)."""
    return source + destination + protocol + length
