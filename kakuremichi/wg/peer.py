"""Everything a device remembers about one peer: its keys, endpoint, sessions, handshake and timers."""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass, field

from kakuremichi.wg.cookie import CookieJar
from kakuremichi.wg.noise import HandshakeState
from kakuremichi.wg.session import Session

Endpoint = tuple  # (host, port) as the socket module gives and takes them



class Timer(enum.IntEnum):
    """A peer's timers, named as in wireguard-go's timers.go (the device's `_on_<name>` fires each). An
    IntEnum: the per-packet paths index a peer's deadlines by timer, and an int hashes in C."""

    RETRANSMIT_HANDSHAKE = 1  # our initiation went unanswered for REKEY_TIMEOUT
    SEND_KEEPALIVE = 2  # we received data and sent nothing back for KEEPALIVE_TIMEOUT
    NEW_HANDSHAKE = 3  # we sent data and heard nothing back: the session may be dead
    ZERO_KEYS = 4  # no new session for a long while: forget the keys
    PERSISTENT_KEEPALIVE = 5  # keep a NAT mapping open


@dataclass
class PeerStats:
    rx_bytes: int = 0
    tx_bytes: int = 0
    last_handshake: float | None = None  # wall-clock time, for `wg show`-like status
    last_received: float | None = None  # device-clock time of the last authenticated packet from the peer


@dataclass(eq=False)
class Peer:
    public_key: bytes
    preshared_key: bytes
    static_static: bytes  # DH(our static, their static), fixed for the peer's lifetime
    cookies: CookieJar
    endpoint: Endpoint | None = None
    heard_from: Endpoint | None = None  # where its last authenticated datagram came from
    persistent_keepalive: float = 0.0

    handshake: HandshakeState | None = None  # our initiation awaiting a response
    latest_timestamp: bytes = bytes(12)  # newest TAI64N accepted from this peer (replay protection)
    last_initiation_consumed: float = float("-inf")
    last_initiation_sent: float = float("-inf")
    handshake_attempts: int = 0
    sent_last_minute_handshake: bool = False
    need_another_keepalive: bool = False

    current: Session | None = None
    previous: Session | None = None
    next: Session | None = None
    staged: deque = field(default_factory=lambda: deque(maxlen=128))

    # timer deadlines (None = not pending) and the earliest heap entry armed for each
    deadlines: dict[Timer, float | None] = field(default_factory=lambda: dict.fromkeys(Timer))
    armed: dict[Timer, float | None] = field(default_factory=lambda: dict.fromkeys(Timer))
    stats: PeerStats = field(default_factory=PeerStats)

    def pending(self, timer: Timer) -> bool:
        return self.deadlines[timer] is not None

    def sessions(self) -> list[Session]:
        return [s for s in (self.current, self.previous, self.next) if s is not None]
