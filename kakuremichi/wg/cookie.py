"""mac1/mac2 and cookie replies: WireGuard's DoS protection (whitepaper §5.3, §5.4.7).

`CookieChecker` guards this device's handshake processing; `CookieJar` is kept per peer and stamps the
macs on what we send to it, remembering the cookie that peer handed us when it was under load.
"""

from __future__ import annotations

import hmac as _hmac
import os
from typing import Callable

from kakuremichi.wg import messages
from kakuremichi.wg.primitives import AuthenticationError, hash_, mac, xaead_decrypt, xaead_encrypt

LABEL_MAC1 = b"mac1----"
LABEL_COOKIE = b"cookie--"
COOKIE_REFRESH_TIME = 120.0  # secrets rotate, and received cookies expire, after this long

_ZERO_MAC = bytes(messages.MAC_LEN)


class CookieChecker:
    """Validates mac1/mac2 on handshake messages sent to us, and mints cookie replies under load."""

    def __init__(self, local_public: bytes, clock: Callable[[], float], rng: Callable[[int], bytes] = os.urandom):
        self.mac1_key = hash_(LABEL_MAC1, local_public)
        self.cookie_key = hash_(LABEL_COOKIE, local_public)
        self.clock = clock
        self.rng = rng
        self._secret = b""
        self._secret_born = float("-inf")

    def mac1_valid(self, msg: bytes | memoryview) -> bool:
        off = messages.mac1_offset(len(msg))
        expected = mac(self.mac1_key, bytes(msg[:off]))
        return _hmac.compare_digest(expected, bytes(msg[off:off + messages.MAC_LEN]))

    def mac2_valid(self, msg: bytes | memoryview, source: bytes) -> bool:
        if self.clock() - self._secret_born > COOKIE_REFRESH_TIME:
            return False  # no secret younger than 2 minutes: no cookie we handed out is still good
        off = messages.mac2_offset(len(msg))
        expected = mac(self._cookie(source), bytes(msg[:off]))
        return _hmac.compare_digest(expected, bytes(msg[off:]))

    def create_reply(self, msg: bytes | memoryview, source: bytes) -> bytes:
        """A cookie reply to handshake message `msg` from `source` (address bytes)."""
        now = self.clock()
        if now - self._secret_born > COOKIE_REFRESH_TIME:
            self._secret = self.rng(32)
            self._secret_born = now
        sender = int.from_bytes(msg[4:8], "little")  # both handshake messages carry it there
        off = messages.mac1_offset(len(msg))
        nonce = self.rng(24)
        encrypted = xaead_encrypt(self.cookie_key, nonce, self._cookie(source),
                                  bytes(msg[off:off + messages.MAC_LEN]))
        return messages.COOKIE_REPLY.pack(messages.MESSAGE_COOKIE_REPLY, sender, nonce, encrypted)

    def _cookie(self, source: bytes) -> bytes:
        return mac(self._secret, source)


class CookieJar:
    """Per-peer sending side: stamps mac1 (and mac2 while we hold a fresh cookie from that peer)."""

    def __init__(self, remote_public: bytes, clock: Callable[[], float]):
        self.mac1_key = hash_(LABEL_MAC1, remote_public)
        self.cookie_key = hash_(LABEL_COOKIE, remote_public)
        self.clock = clock
        self._cookie = b""
        self._cookie_born = float("-inf")
        self._last_mac1 = b""

    def stamp(self, msg: bytearray) -> None:
        """Fill in mac1 and mac2 of an outgoing handshake message, in place."""
        off1 = messages.mac1_offset(len(msg))
        mac1 = mac(self.mac1_key, bytes(msg[:off1]))
        msg[off1:off1 + messages.MAC_LEN] = mac1
        self._last_mac1 = mac1
        off2 = messages.mac2_offset(len(msg))
        fresh = self._cookie and self.clock() - self._cookie_born < COOKIE_REFRESH_TIME
        msg[off2:] = mac(self._cookie, bytes(msg[:off2])) if fresh else _ZERO_MAC

    def consume_reply(self, reply: bytes | memoryview) -> None:
        """Store the cookie from a reply to our last handshake message; raises if it isn't one."""
        if not self._last_mac1:
            raise AuthenticationError("cookie reply without a handshake message of ours")
        _, _, nonce, encrypted = messages.COOKIE_REPLY.unpack_from(reply)
        self._cookie = xaead_decrypt(self.cookie_key, nonce, encrypted, self._last_mac1)
        self._cookie_born = self.clock()
