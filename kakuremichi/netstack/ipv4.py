"""IPv4 datagrams: parsing with validation, building, fragmentation and bounded reassembly.

Parsing never trusts a length field: every malformed packet becomes a `Malformed` with a short reason the
stack counts, so hostile input costs a counter increment and nothing else. Reassembly keeps hard caps on
datagrams and bytes in flight, per source and in total, refuses tiny fragments, and throws away any
datagram whose fragments overlap (RFC 5722's stance: overlaps are only ever an attack or a bug).
"""

from __future__ import annotations

import bisect
import ipaddress
import struct
from collections import Counter, OrderedDict
from typing import NamedTuple

from kakuremichi.netstack.checksum import finish, partial, verify

PROTO_ICMP, PROTO_TCP, PROTO_UDP = 1, 6, 17
HEADER = struct.Struct("!BBHHHBBHII")
HEADER_LEN = 20
DEFAULT_TTL = 64
_DF, _MF, _OFFSET = 0x4000, 0x2000, 0x1FFF

REASSEMBLY_TIMEOUT = 15.0
MAX_REASSEMBLIES = 256  # datagrams in reassembly, every source together
MAX_REASSEMBLY_BYTES = 4 << 20
MAX_REASSEMBLIES_PER_SOURCE = 32
MAX_REASSEMBLY_BYTES_PER_SOURCE = 512 << 10  # eight datagrams of 64 KiB
# A fragment other than the last carries at least this many bytes (and a multiple of 8, RFC 791). Senders
# fragment at the path MTU, and Linux never lets that fall below 552 bytes (528 bytes of payload); tiny or
# empty fragments are only ever an attack, one that would otherwise be held at no cost to any budget.
MIN_FRAGMENT = 256
MAX_FRAGMENTS = 128  # pieces of one datagram: 64 KiB at that smallest path MTU takes 125


class Malformed(ValueError):
    """A packet that must be dropped; args[0] is the counter name."""


class Datagram(NamedTuple):
    source: int
    destination: int
    protocol: int
    ttl: int
    ident: int
    fragment: int  # MF flag and offset; 0 for a whole datagram
    header: memoryview
    payload: memoryview


def address(value: str | int | ipaddress.IPv4Address) -> int:
    """An IPv4 address as the 32-bit int the stack works with."""
    return int(ipaddress.IPv4Address(value))


def parse(packet: bytes | bytearray | memoryview) -> Datagram:
    """Validate and split one IPv4 packet; raises Malformed."""
    view = memoryview(packet)
    size = len(view)
    if size < HEADER_LEN:
        raise Malformed("truncated")
    vihl, _, total, ident, frag, ttl, proto, _, src, dst = HEADER.unpack_from(view)
    if vihl >> 4 != 4:
        raise Malformed("not-ipv4")
    header_len = (vihl & 0x0F) << 2
    if header_len < HEADER_LEN or total < header_len or total > size:
        raise Malformed("bad-length")
    header = view[:header_len]
    if not verify(int.from_bytes(header, "big")):
        raise Malformed("bad-checksum")
    return Datagram(src, dst, proto, ttl, ident, frag & (_MF | _OFFSET), header, view[header_len:total])


def build(source: int, destination: int, protocol: int, payload: bytes | bytearray | memoryview, *,
          ttl: int = DEFAULT_TTL, ident: int = 0, fragment: int = _DF) -> bytes:
    """One IPv4 packet around `payload` (Don't Fragment set unless `fragment` says otherwise)."""
    total = HEADER_LEN + len(payload)
    words = HEADER.pack(0x45, 0, total, ident, fragment, ttl, protocol, 0, source, destination)
    header = HEADER.pack(0x45, 0, total, ident, fragment, ttl, protocol, finish(partial(words)), source,
                         destination)
    return b"".join((header, payload))


def fragment(source: int, destination: int, protocol: int, payload: bytes | memoryview, mtu: int, *,
             ident: int, ttl: int = DEFAULT_TTL) -> list[bytes]:
    """`payload` as one packet if it fits `mtu`, else as fragments on 8-byte boundaries."""
    if HEADER_LEN + len(payload) <= mtu:
        return [build(source, destination, protocol, payload, ttl=ttl, ident=ident, fragment=0)]
    step = (mtu - HEADER_LEN) & ~7
    view = memoryview(payload)
    packets = []
    for offset in range(0, len(view), step):
        more = _MF if offset + step < len(view) else 0
        packets.append(build(source, destination, protocol, view[offset:offset + step], ttl=ttl, ident=ident,
                             fragment=more | (offset >> 3)))
    return packets


class _Partial:
    """One datagram being reassembled: its pieces sorted by offset, never overlapping (so a piece costs a
    bisection), and never reaching past the end once the last fragment set it. Non-overlapping pieces
    inside [0, end) whose sizes add up to `end` cover it exactly, offset 0 included: that sum is the
    whole test for completeness."""

    __slots__ = ("key", "source", "deadline", "starts", "pieces", "size", "end", "header")

    def __init__(self, key: tuple, deadline: float) -> None:
        self.key = key
        self.source = key[0]
        self.deadline = deadline
        self.starts: list[int] = []  # offsets of `pieces`, ascending
        self.pieces: list[bytes] = []
        self.size = 0
        self.end: int | None = None  # payload length, known once the last fragment arrived
        self.header: bytes | None = None  # the first fragment's header, for ICMP quoting

    def conflict(self, offset: int, stop: int, more: int) -> str | None:
        """Why a piece at [offset, stop) cannot belong to this datagram (a drop reason), or None."""
        starts, pieces = self.starts, self.pieces
        i = bisect.bisect_right(starts, offset)
        if (i and starts[i - 1] + len(pieces[i - 1]) > offset) or (i < len(starts) and starts[i] < stop):
            return "fragment-overlap"
        if more:
            if self.end is not None and stop > self.end:
                return "fragment-beyond-end"
        elif self.end is not None or (starts and starts[-1] + len(pieces[-1]) > stop):
            return "fragment-beyond-end"  # a second last fragment, or pieces already held past this end
        if len(starts) >= MAX_FRAGMENTS:
            return "fragment-too-many"
        return None

    def insert(self, offset: int, data: bytes, more: int) -> None:
        i = bisect.bisect_right(self.starts, offset)
        self.starts.insert(i, offset)
        self.pieces.insert(i, data)
        self.size += len(data)
        if not more:
            self.end = offset + len(data)


class _Source:
    """What one source address holds in reassembly (WireGuard binds a source address to one peer)."""

    __slots__ = ("partials", "bytes")

    def __init__(self) -> None:
        self.partials: dict[tuple, _Partial] = {}  # oldest first
        self.bytes = 0


class Reassembler:
    """Bounded IPv4 reassembly (RFC 791): whole datagrams out, expired or hostile ones silently gone.

    Budgets hold per source and in total. A source over its own budget loses its own oldest datagram;
    when the total is full, the source holding the most loses its oldest, so one peer's flood can neither
    evict nor starve another peer's reassembly. Every refusal is counted in `drops` by reason.
    """

    def __init__(self, timeout: float = REASSEMBLY_TIMEOUT, max_datagrams: int = MAX_REASSEMBLIES,
                 max_bytes: int = MAX_REASSEMBLY_BYTES, *,
                 max_source_datagrams: int = MAX_REASSEMBLIES_PER_SOURCE,
                 max_source_bytes: int = MAX_REASSEMBLY_BYTES_PER_SOURCE, drops: Counter | None = None) -> None:
        self.timeout = timeout
        self.max_datagrams = max_datagrams
        self.max_bytes = max_bytes
        self.max_source_datagrams = max_source_datagrams
        self.max_source_bytes = max_source_bytes
        self.drops: Counter[str] = Counter() if drops is None else drops
        self._partials: OrderedDict[tuple, _Partial] = OrderedDict()  # oldest first, so also by deadline
        self._sources: dict[int, _Source] = {}
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._partials)

    @property
    def held_bytes(self) -> int:
        return self._bytes

    def held_by(self, source: int) -> tuple[int, int]:
        """(datagrams, bytes) that `source` has in reassembly."""
        entry = self._sources.get(source)
        return (len(entry.partials), entry.bytes) if entry else (0, 0)

    def add(self, datagram: Datagram, now: float) -> Datagram | None:
        """Feed one fragment; returns the reassembled datagram when it is complete."""
        offset = (datagram.fragment & _OFFSET) << 3
        size = len(datagram.payload)
        stop = offset + size
        more = datagram.fragment & _MF
        if more and (size < MIN_FRAGMENT or size & 7):
            self.drops["fragment-too-small"] += 1  # legitimate senders fragment at the path MTU
            return None
        if stop > 0xFFFF - HEADER_LEN:
            self.drops["fragment-too-long"] += 1
            return None
        key = (datagram.source, datagram.destination, datagram.protocol, datagram.ident)
        entry = self._partials.get(key)
        if entry is None:
            self.expire(now)
            entry = self._partials[key] = _Partial(key, now + self.timeout)
            self._sources.setdefault(datagram.source, _Source()).partials[key] = entry
        reason = entry.conflict(offset, stop, more)
        if reason is not None:
            self._discard(entry, reason)
            return None
        if not self._make_room(entry, size):
            return None
        entry.insert(offset, bytes(datagram.payload), more)
        if offset == 0:
            entry.header = bytes(datagram.header)
        self._bytes += size
        self._sources[entry.source].bytes += size
        if entry.end is None or entry.size != entry.end:
            return None
        self._discard(entry, None)
        return datagram._replace(fragment=0, header=memoryview(entry.header),
                                 payload=memoryview(b"".join(entry.pieces)))

    def _make_room(self, entry: _Partial, size: int) -> bool:
        """Evict until `size` more bytes for `entry` fit every budget; False if `entry` itself had to go."""
        own = self._sources[entry.source]
        while True:
            if own.bytes + size > self.max_source_bytes or len(own.partials) > self.max_source_datagrams:
                loser = own
            elif self._bytes + size > self.max_bytes:
                loser = max(self._sources.values(), key=lambda s: s.bytes)
            elif len(self._partials) > self.max_datagrams:
                loser = max(self._sources.values(), key=lambda s: len(s.partials))
            else:
                return True
            victim = next(iter(loser.partials.values()))
            self._discard(victim, "reassembly-evicted")
            if victim is entry:
                return False

    def expire(self, now: float) -> None:
        partials = self._partials
        while partials:
            entry = next(iter(partials.values()))
            if entry.deadline > now:
                break
            self._discard(entry, "reassembly-expired")

    def next_deadline(self) -> float | None:
        return next(iter(self._partials.values())).deadline if self._partials else None

    def _discard(self, entry: _Partial, reason: str | None) -> None:
        del self._partials[entry.key]
        source = self._sources[entry.source]
        del source.partials[entry.key]
        source.bytes -= entry.size
        if not source.partials:
            del self._sources[entry.source]
        self._bytes -= entry.size
        if reason is not None:
            self.drops[reason] += 1
