"""ICMP over IPv4: answering echo requests, building requests and reading replies (what `ping` needs),
and the error messages a host sends (port unreachable) or must heed (fragmentation needed, for PMTU).
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from typing import NamedTuple

from kakuremichi.netstack import ipv4
from kakuremichi.netstack.checksum import checksum, partial, verify

__all__ = ["checksum", "echo_request", "parse_echo_reply", "EchoReply", "answer_echo", "unreachable",
           "parse_error", "QuotedError"]

_ECHO = struct.Struct("!BBHHH")
ECHO_REPLY, DEST_UNREACHABLE, ECHO_REQUEST = 0, 3, 8
PORT_UNREACHABLE, FRAGMENTATION_NEEDED = 3, 4
PROTO_ICMP = ipv4.PROTO_ICMP
_QUOTE = 8  # bytes of the offending payload quoted in an error (RFC 792)


@dataclass(frozen=True)
class EchoReply:
    source: ipaddress.IPv4Address
    identifier: int
    sequence: int
    ttl: int
    size: int  # ICMP bytes, as ping(8) reports


class QuotedError(NamedTuple):
    """An ICMP error about one of our packets: what it says and which flow it concerns."""

    kind: int
    code: int
    mtu: int  # next-hop MTU for FRAGMENTATION_NEEDED, else 0
    source: int  # of the quoted (our) packet
    destination: int
    protocol: int
    source_port: int
    destination_port: int


def _message(kind: int, code: int, rest: int, body: bytes | memoryview) -> bytes:
    head = _ECHO.pack(kind, code, 0, rest >> 16, rest & 0xFFFF)
    total = partial(head) + partial(body)
    return b"".join((_ECHO.pack(kind, code, 0xFFFF - total % 0xFFFF, rest >> 16, rest & 0xFFFF), body))


def echo_request(source: ipaddress.IPv4Address, destination: ipaddress.IPv4Address, identifier: int,
                 sequence: int, payload: bytes, ttl: int = 64) -> bytes:
    """An IPv4 packet carrying an ICMP echo request."""
    message = _message(ECHO_REQUEST, 0, identifier << 16 | sequence, payload)
    return ipv4.build(int(source), int(destination), PROTO_ICMP, message, ttl=ttl, ident=identifier, fragment=0)


def parse_echo_reply(packet: bytes | memoryview) -> EchoReply | None:
    """The echo reply inside an IPv4 packet, or None if it is anything else or malformed."""
    try:
        datagram = ipv4.parse(packet)
    except ipv4.Malformed:
        return None
    message = datagram.payload
    if datagram.protocol != PROTO_ICMP or datagram.fragment or len(message) < 8:
        return None
    kind, code, _, identifier, sequence = _ECHO.unpack_from(message)
    if kind != ECHO_REPLY or code != 0 or not verify(partial(message)):
        return None
    return EchoReply(ipaddress.IPv4Address(datagram.source), identifier, sequence, datagram.ttl, len(message))


def answer_echo(datagram: ipv4.Datagram) -> bytes | None:
    """The reply to an echo request addressed to us, None for any other (or corrupt) ICMP message."""
    message = datagram.payload
    if len(message) < 8 or message[0] != ECHO_REQUEST or message[1] != 0 or not verify(partial(message)):
        return None
    rest = int.from_bytes(message[4:8], "big")
    reply = _message(ECHO_REPLY, 0, rest, message[8:])
    return ipv4.build(datagram.destination, datagram.source, PROTO_ICMP, reply, fragment=0)


def unreachable(datagram: ipv4.Datagram, code: int) -> bytes:
    """A destination-unreachable error for `datagram`, quoting its header and first 8 payload bytes."""
    body = b"".join((datagram.header, datagram.payload[:_QUOTE]))
    return ipv4.build(datagram.destination, datagram.source, PROTO_ICMP, _message(DEST_UNREACHABLE, code, 0, body),
                      fragment=0)


def parse_error(datagram: ipv4.Datagram) -> QuotedError | None:
    """The destination-unreachable error in an ICMP message, None for anything else or malformed."""
    message = datagram.payload
    if len(message) < 8 + ipv4.HEADER_LEN + 4 or message[0] != DEST_UNREACHABLE or not verify(partial(message)):
        return None
    quoted = message[8:]
    header_len = (quoted[0] & 0x0F) << 2
    if quoted[0] >> 4 != 4 or header_len < ipv4.HEADER_LEN or len(quoted) < header_len + 4:
        return None
    _, _, _, _, _, _, proto, _, src, dst = ipv4.HEADER.unpack_from(quoted)
    sport, dport = struct.unpack_from("!HH", quoted, header_len)
    mtu = int.from_bytes(message[6:8], "big") if message[1] == FRAGMENTATION_NEEDED else 0
    return QuotedError(message[0], message[1], mtu, src, dst, proto, sport, dport)
