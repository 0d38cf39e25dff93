"""WireGuard's four message layouts (whitepaper §5.4) and their fixed sizes.

Handshake messages are small and rare, so they are plain dataclass-free byte layouts handled with
`struct`; transport messages are parsed in place on the hot path by the device itself.
"""

from __future__ import annotations

import struct

MESSAGE_INITIATION = 1
MESSAGE_RESPONSE = 2
MESSAGE_COOKIE_REPLY = 3
MESSAGE_TRANSPORT = 4

INITIATION_SIZE = 148
RESPONSE_SIZE = 92
COOKIE_REPLY_SIZE = 64
TRANSPORT_HEADER_SIZE = 16
TRANSPORT_MIN_SIZE = TRANSPORT_HEADER_SIZE + 16  # header + Poly1305 tag: a keepalive

# type+reserved (little-endian u32 whose high bytes must be zero), sender, ephemeral, static, timestamp
INITIATION = struct.Struct("<II32s48s28s")
RESPONSE = struct.Struct("<III32s16s")
COOKIE_REPLY = struct.Struct("<II24s32s")
TRANSPORT_HEADER = struct.Struct("<IIQ")

MAC_LEN = 16


def mac1_offset(size: int) -> int:
    """mac1 covers everything before it; mac2 covers everything before itself (mac1 included)."""
    return size - 2 * MAC_LEN


def mac2_offset(size: int) -> int:
    return size - MAC_LEN
