"""ICMP echo over IPv4: building requests and recognising replies (what `ping` needs)."""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

_IPV4_HEADER = struct.Struct("!BBHHHBBH4s4s")
_ECHO = struct.Struct("!BBHHH")
ECHO_REPLY, ECHO_REQUEST = 0, 8
PROTO_ICMP = 1


def checksum(data: bytes) -> int:
    """RFC 1071 Internet checksum, summed as one big integer (C speed, no per-word loop)."""
    if len(data) % 2:
        data += b"\0"
    total = sum(memoryview(data).cast("H"))  # native order; folding makes it order-independent
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return struct.unpack("!H", struct.pack("=H", ~total & 0xFFFF))[0]


@dataclass(frozen=True)
class EchoReply:
    source: ipaddress.IPv4Address
    identifier: int
    sequence: int
    ttl: int
    size: int  # ICMP bytes, as ping(8) reports


def echo_request(source: ipaddress.IPv4Address, destination: ipaddress.IPv4Address, identifier: int,
                 sequence: int, payload: bytes, ttl: int = 64) -> bytes:
    message = bytearray(_ECHO.pack(ECHO_REQUEST, 0, 0, identifier, sequence) + payload)
    struct.pack_into("!H", message, 2, checksum(bytes(message)))
    header = bytearray(_IPV4_HEADER.pack(0x45, 0, 20 + len(message), identifier, 0, ttl, PROTO_ICMP, 0,
                                         source.packed, destination.packed))
    struct.pack_into("!H", header, 10, checksum(bytes(header)))
    return bytes(header) + bytes(message)


def parse_echo_reply(packet: bytes | memoryview) -> EchoReply | None:
    """The echo reply inside an IPv4 packet, or None if it is anything else or malformed."""
    if len(packet) < 28 or packet[0] >> 4 != 4:
        return None
    header_len = (packet[0] & 0x0F) * 4
    if header_len < 20 or packet[9] != PROTO_ICMP or len(packet) < header_len + 8:
        return None
    message = bytes(packet[header_len:])
    kind, code, _, identifier, sequence = _ECHO.unpack_from(message)
    if kind != ECHO_REPLY or code != 0 or checksum(message) != 0:
        return None
    return EchoReply(ipaddress.IPv4Address(bytes(packet[12:16])), identifier, sequence, packet[8], len(message))
