"""IPv4 datagrams: parsing with validation, building, fragmentation and bounded reassembly.

Parsing never trusts a length field: every malformed packet becomes a `Malformed` with a short reason the
stack counts, so hostile input costs a counter increment and nothing else. Reassembly keeps a hard cap on
datagrams and bytes in flight and throws away any datagram whose fragments overlap (RFC 5722's stance:
overlaps are only ever an attack or a bug).
"""

from __future__ import annotations

import ipaddress
import struct
from typing import NamedTuple

from kakuremichi.netstack.checksum import finish, partial, verify

PROTO_ICMP, PROTO_TCP, PROTO_UDP = 1, 6, 17
HEADER = struct.Struct("!BBHHHBBHII")
HEADER_LEN = 20
DEFAULT_TTL = 64
_DF, _MF, _OFFSET = 0x4000, 0x2000, 0x1FFF

REASSEMBLY_TIMEOUT = 15.0
MAX_REASSEMBLIES = 64
MAX_REASSEMBLY_BYTES = 1 << 20


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
    __slots__ = ("deadline", "pieces", "size", "end", "header")

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.pieces: list[tuple[int, bytes]] = []
        self.size = 0
        self.end: int | None = None  # payload length, known once the last fragment arrived
        self.header: bytes | None = None  # the first fragment's header, for ICMP quoting


class Reassembler:
    """Bounded IPv4 reassembly (RFC 791): whole datagrams out, expired or hostile ones silently gone."""

    def __init__(self, timeout: float = REASSEMBLY_TIMEOUT, max_datagrams: int = MAX_REASSEMBLIES,
                 max_bytes: int = MAX_REASSEMBLY_BYTES) -> None:
        self.timeout = timeout
        self.max_datagrams = max_datagrams
        self.max_bytes = max_bytes
        self._partials: dict[tuple, _Partial] = {}
        self._bytes = 0
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._partials)

    def add(self, datagram: Datagram, now: float) -> Datagram | None:
        """Feed one fragment; returns the reassembled datagram when it is complete."""
        key = (datagram.source, datagram.destination, datagram.protocol, datagram.ident)
        entry = self._partials.get(key)
        if entry is None:
            self.expire(now)
            if len(self._partials) >= self.max_datagrams:
                self.dropped += 1
                return None
            entry = self._partials[key] = _Partial(now + self.timeout)
        offset = (datagram.fragment & _OFFSET) << 3
        data = bytes(datagram.payload)
        stop = offset + len(data)
        more = datagram.fragment & _MF
        if (stop > 0xFFFF - HEADER_LEN or (more and len(data) & 7) or (entry.end is not None and stop > entry.end)
                or (not more and entry.end is not None) or self._bytes + len(data) > self.max_bytes
                or any(start < stop and offset < start + len(piece) for start, piece in entry.pieces)):
            self._discard(key)
            return None
        if not more:
            entry.end = stop
        if offset == 0:
            entry.header = bytes(datagram.header)
        entry.pieces.append((offset, data))
        entry.size += len(data)
        self._bytes += len(data)
        if entry.end is None or entry.size != entry.end:
            return None
        self._discard(key, dropped=False)
        entry.pieces.sort()
        payload = memoryview(b"".join(piece for _, piece in entry.pieces))
        return datagram._replace(fragment=0, header=memoryview(entry.header), payload=payload)

    def expire(self, now: float) -> None:
        for key in [k for k, e in self._partials.items() if e.deadline <= now]:
            self._discard(key)

    def next_deadline(self) -> float | None:
        return min((e.deadline for e in self._partials.values()), default=None)

    def _discard(self, key: tuple, dropped: bool = True) -> None:
        entry = self._partials.pop(key, None)
        if entry is not None:
            self._bytes -= entry.size
            self.dropped += dropped
