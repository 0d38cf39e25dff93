"""The PROXY protocol (HAProxy's, versions 1 and 2), sans-IO: the header a gateway puts before a tcp
connection's bytes, or before each udp datagram (v2 only), so the target learns the client's address.

`encode` writes a header; `decode` reads one strictly, as a consumer must (tests check our headers with it,
and it is fuzzed): anything that is not exactly the specification raises `ProxyProtocolError`, a header not
yet complete raises `Incomplete`. Addresses are normalised to one family: IPv4-mapped IPv6 addresses (a
dual-stack listener's clients) are written as IPv4, and an IPv4 address beside an IPv6 one is mapped.
Importing this module loads no Trio.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from typing import Literal

Address = tuple[str, int]
Transport = Literal["tcp", "udp"]

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V1_MAX = 107  # the longest v1 line, CRLF included (the specification's bound)
_V2_FIXED = struct.Struct("!12sBBH")
_V2_VERSION_PROXY, _V2_VERSION_LOCAL = 0x21, 0x20
_FAMILIES = {(4, "tcp"): 0x11, (4, "udp"): 0x12, (6, "tcp"): 0x21, (6, "udp"): 0x22}
_BY_FAMILY = {code: kind for kind, code in _FAMILIES.items()}
_ADDRESSES = {4: struct.Struct("!4s4sHH"), 6: struct.Struct("!16s16sHH")}


class ProxyProtocolError(ValueError):
    """Bytes that are not a PROXY protocol header."""


class Incomplete(ProxyProtocolError):
    """The header has begun but is not complete yet: wait for more bytes."""


@dataclass(frozen=True)
class Header:
    """A decoded header: `source` is the client, `destination` the address it connected to; both None for a
    v1 UNKNOWN or v2 LOCAL header (health checks: no client to speak of)."""

    version: int
    transport: Transport
    source: Address | None
    destination: Address | None


def _pair(source: Address, destination: Address) -> tuple[int, ipaddress.IPv4Address | ipaddress.IPv6Address,
                                                            ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """Both addresses in one family: (4 or 6, source, destination)."""
    addresses = []
    for host, _ in (source, destination):
        address = ipaddress.ip_address(host.split("%", 1)[0])
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        addresses.append(address)
    if all(a.version == 4 for a in addresses):
        return 4, addresses[0], addresses[1]
    mapped = [ipaddress.IPv6Address(f"::ffff:{a}") if a.version == 4 else a for a in addresses]
    return 6, mapped[0], mapped[1]


def encode(version: Literal["v1", "v2"], transport: Transport, source: Address, destination: Address) -> bytes:
    """The header telling that `source` (the client) reached `destination` over `transport`."""
    family, src, dst = _pair(source, destination)
    if version == "v1":
        if transport != "tcp":
            raise ValueError("PROXY protocol v1 describes TCP only: use v2 for udp")
        return f"PROXY TCP{family} {src} {dst} {source[1]} {destination[1]}\r\n".encode("ascii")
    body = _ADDRESSES[family].pack(src.packed, dst.packed, source[1], destination[1])
    return _V2_FIXED.pack(V2_SIGNATURE, _V2_VERSION_PROXY, _FAMILIES[family, transport], len(body)) + body


def decode(data: bytes | bytearray | memoryview) -> tuple[Header, int]:
    """The header at the start of `data` and its length in bytes (what follows is the payload)."""
    data = bytes(data[:max(V1_MAX, 16 + 0xFFFF)])
    if data[:len(V2_SIGNATURE)] == V2_SIGNATURE[:len(data)] and data[:1] == b"\r":
        return _decode_v2(data)
    if data[:6] == b"PROXY "[:len(data)]:
        return _decode_v1(data)
    raise ProxyProtocolError("no PROXY protocol signature")


def _decode_v1(data: bytes) -> tuple[Header, int]:
    end = data.find(b"\r\n", 0, V1_MAX)
    if end < 0:
        if len(data) >= V1_MAX or b"\n" in data:
            raise ProxyProtocolError(f"a v1 header ends with CRLF within {V1_MAX} bytes")
        raise Incomplete("the v1 header has no CRLF yet")
    try:
        line = data[:end].decode("ascii")
    except UnicodeDecodeError:
        raise ProxyProtocolError("a v1 header is ASCII") from None
    parts = line.split(" ")
    if parts[:2] == ["PROXY", "UNKNOWN"]:
        return Header(1, "tcp", None, None), end + 2
    if len(parts) != 6 or parts[1] not in ("TCP4", "TCP6"):
        raise ProxyProtocolError("a v1 header is: PROXY TCP4|TCP6 source destination sport dport")
    family = int(parts[1][3])
    try:
        hosts = [ipaddress.ip_address(host) for host in parts[2:4]]
    except ValueError:
        raise ProxyProtocolError("a v1 header's addresses are IP addresses") from None
    if any(host.version != family for host in hosts) or any(str(host) != text for host, text in zip(hosts, parts[2:4])):
        raise ProxyProtocolError(f"a v1 header's addresses are canonical IPv{family} addresses")
    ports = []
    for text in parts[4:6]:
        if not (text.isascii() and text.isdigit()) or (text.startswith("0") and text != "0") or int(text) > 65535:
            raise ProxyProtocolError("a v1 header's ports are decimal numbers from 0 to 65535")
        ports.append(int(text))
    return Header(1, "tcp", (str(hosts[0]), ports[0]), (str(hosts[1]), ports[1])), end + 2


def _decode_v2(data: bytes) -> tuple[Header, int]:
    if len(data) < _V2_FIXED.size:
        raise Incomplete("the v2 header is not complete yet")
    _, version, family_code, length = _V2_FIXED.unpack_from(data)
    if version not in (_V2_VERSION_PROXY, _V2_VERSION_LOCAL):
        raise ProxyProtocolError(f"unknown v2 version and command byte {version:#04x}")
    total = _V2_FIXED.size + length
    if len(data) < total:
        raise Incomplete("the v2 header is not complete yet")
    if version == _V2_VERSION_LOCAL:
        return Header(2, "tcp", None, None), total
    kind = _BY_FAMILY.get(family_code)
    if kind is None:
        raise ProxyProtocolError(f"unsupported v2 address family and transport {family_code:#04x}")
    family, transport = kind
    layout = _ADDRESSES[family]
    if length < layout.size:
        raise ProxyProtocolError(f"a v2 IPv{family} header carries at least {layout.size} address bytes")
    src, dst, sport, dport = layout.unpack_from(data, _V2_FIXED.size)
    make = ipaddress.IPv4Address if family == 4 else ipaddress.IPv6Address
    return Header(2, transport, (str(make(src)), sport), (str(make(dst)), dport)), total  # TLVs after: skipped
