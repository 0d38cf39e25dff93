"""UDP over IPv4: datagram parsing and building, and a bounded receive queue per bound port."""

from __future__ import annotations

import struct
from collections import deque
from typing import NamedTuple

from kakuremichi.netstack import ipv4
from kakuremichi.netstack.checksum import finish, partial, pseudo_header, verify

HEADER = struct.Struct("!HHHH")
HEADER_LEN = 8
MAX_PAYLOAD = 0xFFFF - ipv4.HEADER_LEN - HEADER_LEN
DEFAULT_QUEUE_BYTES = 1 << 20


class Datagram(NamedTuple):
    source: int
    source_port: int
    destination: int
    destination_port: int
    payload: memoryview


def parse(datagram: ipv4.Datagram, verify_checksum: bool = True) -> Datagram:
    """Validate the UDP header and checksum (0 means the sender sent none, and a link that authenticates
    packets vouches for it); raises ipv4.Malformed."""
    segment = datagram.payload
    if len(segment) < HEADER_LEN:
        raise ipv4.Malformed("truncated")
    sport, dport, length, check = HEADER.unpack_from(segment)
    if length < HEADER_LEN or length > len(segment):
        raise ipv4.Malformed("bad-length")
    segment = segment[:length]
    if check and verify_checksum and not verify(
            pseudo_header(datagram.source, datagram.destination, ipv4.PROTO_UDP, length) + partial(segment)):
        raise ipv4.Malformed("bad-checksum")
    return Datagram(datagram.source, sport, datagram.destination, dport, segment[HEADER_LEN:])


def build(source: int, source_port: int, destination: int, destination_port: int,
          payload: bytes | memoryview) -> bytes:
    """A UDP datagram (without the IP header) with its checksum."""
    length = HEADER_LEN + len(payload)
    total = pseudo_header(source, destination, ipv4.PROTO_UDP, length) + source_port + destination_port + length
    header = HEADER.pack(source_port, destination_port, length, finish(total + partial(payload)))
    return b"".join((header, payload))


class Endpoint:
    """A bound UDP port: datagrams wait in a byte-bounded queue, and overflow is dropped as a kernel would."""

    def __init__(self, address: int, port: int, queue_bytes: int = DEFAULT_QUEUE_BYTES) -> None:
        self.address = address  # 0: any of the stack's addresses
        self.port = port
        self.queue: deque[tuple[bytes, tuple[int, int], int]] = deque()
        self.queued_bytes = 0
        self.queue_bytes = queue_bytes
        self.dropped = 0
        self.closed = False
        self.user = None  # for the layer above (its wait queue)

    def deliver(self, datagram: Datagram) -> bool:
        if self.queued_bytes + len(datagram.payload) > self.queue_bytes:
            self.dropped += 1
            return False
        data = bytes(datagram.payload)
        self.queue.append((data, (datagram.source, datagram.source_port), datagram.destination))
        self.queued_bytes += len(data)
        return True

    def pop(self) -> tuple[bytes, tuple[int, int], int] | None:
        """The oldest datagram as (payload, (source, source port), our address), None if none waits."""
        if not self.queue:
            return None
        item = self.queue.popleft()
        self.queued_bytes -= len(item[0])
        return item
