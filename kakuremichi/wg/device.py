"""A WireGuard device as a sans-IO state machine.

Feed it UDP datagrams (`receive_datagram`), IP packets to tunnel (`send_packet`) and the passage of time
(`tick` at `next_deadline()`); take what it produced with `datagrams_to_send()` (for the UDP socket) and
`packets_received()` (decrypted IP packets, already checked against the sending peer's AllowedIPs), as
h11's `data_to_send()` hands over its bytes; tests may look at the `outgoing` / `incoming` lists. It never
touches a socket or sleeps, so every behaviour, timers included, is testable with a fake clock; the
Trio driver only moves bytes.

Malformed, forged, replayed or unroutable input is dropped silently, as the protocol requires, and
counted in `dropped` by reason.
"""

from __future__ import annotations

import heapq
import ipaddress
import itertools
import logging
import os
import random
import time
from collections import Counter, OrderedDict
from typing import Callable, Iterable

from kakuremichi.wg import messages, noise
from kakuremichi.wg.allowedips import AllowedIPs, inner_length_and_source, packet_destination
from kakuremichi.wg.constants import (
    DEFAULT_MTU,
    HANDSHAKE_INITIATION_RATE,
    KEEPALIVE_TIMEOUT,
    MAX_TIMER_HANDSHAKES,
    REJECT_AFTER_MESSAGES,
    REJECT_AFTER_TIME,
    REKEY_AFTER_MESSAGES,
    REKEY_AFTER_TIME,
    REKEY_TIMEOUT,
    REKEY_TIMEOUT_JITTER_MAX,
    UNDER_LOAD_HOLD,
    ZERO_KEYS_AFTER,
)
from kakuremichi.wg.cookie import CookieChecker, CookieJar
from kakuremichi.wg.peer import Endpoint, Peer, Timer
from kakuremichi.wg.primitives import AuthenticationError, dh, nonce, private_from_bytes, tai64n
from kakuremichi.wg.ratelimit import RateLimiter
from kakuremichi.wg.session import Session

log = logging.getLogger("kakuremichi.wg")
# The timers by bare name: a module global is read several times faster than an enum attribute (per packet).
RETRANSMIT_HANDSHAKE, SEND_KEEPALIVE, NEW_HANDSHAKE, ZERO_KEYS, PERSISTENT_KEEPALIVE = Timer

_TRANSPORT = messages.TRANSPORT_HEADER
# Initiations kept from keys not configured yet (a gateway started before its config arrived): enough for
# every agent of a large deployment, about 300 bytes each.
MAX_EARLY_INITIATIONS = 1024
_LAST_MINUTE_REKEY_AGE = REJECT_AFTER_TIME - KEEPALIVE_TIMEOUT - REKEY_TIMEOUT


class Device:
    """One WireGuard interface: a static key, its peers, and the sessions between them."""

    def __init__(self, private_key: bytes, *, mtu: int = DEFAULT_MTU,
                 clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time,
                 rng: Callable[[int], bytes] = os.urandom,
                 handshakes_per_second_under_load: int = 512) -> None:
        self.identity = noise.StaticIdentity.from_private(private_from_bytes(private_key))
        self.public_key = self.identity.public
        self.mtu = mtu
        self.clock = clock
        self.wall_clock = wall_clock
        self.rng = rng
        self._jitter = random.Random(rng(16))
        self.cookie_checker = CookieChecker(self.public_key, clock, rng)
        self.rate_limiter = RateLimiter(clock)
        self.load_threshold = handshakes_per_second_under_load
        self._load_window_start = float("-inf")
        self._load_count = 0
        self._under_load_until = float("-inf")

        self.peers: dict[bytes, Peer] = {}
        self.allowed_ips: AllowedIPs[Peer] = AllowedIPs()
        self._index: dict[int, Peer | Session] = {}  # our receiver indices: handshakes and sessions
        self._timers: list[tuple[float, int, Peer, Timer]] = []
        self._timer_seq = itertools.count()
        self._fire = {RETRANSMIT_HANDSHAKE: self._on_retransmit_handshake,
                      SEND_KEEPALIVE: self._on_send_keepalive, NEW_HANDSHAKE: self._on_new_handshake,
                      ZERO_KEYS: self._on_zero_keys, PERSISTENT_KEEPALIVE: self._on_persistent_keepalive}

        self.outgoing: list[tuple[bytes | bytearray, Endpoint]] = []
        self.incoming: list[bytes | memoryview] = []
        self.moved: dict[bytes, Endpoint | None] = {}  # see peers_moved()
        self.dropped: Counter[str] = Counter()
        # Authenticated initiations from keys we do not know yet, kept briefly: when control tells a gateway
        # about a new agent a moment after the agent's first initiation arrived, answering it at once saves
        # the initiator a REKEY_TIMEOUT wait. Bounded, and only ever replayed through the full checks.
        self._early_initiations: OrderedDict[bytes, tuple[bytes, Endpoint, float]] = OrderedDict()

    # ----------------------------------------------------------------- output

    def datagrams_to_send(self) -> list[tuple[bytes | bytearray, Endpoint]]:
        """The datagrams produced since the last call, with where each goes (handed over, not copied)."""
        out, self.outgoing = self.outgoing, []
        return out

    def packets_received(self) -> list[bytes | memoryview]:
        """The decrypted IP packets accepted since the last call, for the stack above."""
        packets, self.incoming = self.incoming, []
        return packets

    def peers_moved(self) -> dict[bytes, Endpoint | None]:
        """Peers heard from at a new address since the last call, by public key, with that address (None:
        the peer was removed), for a driver that gives each peer a socket of its own."""
        moved, self.moved = self.moved, {}
        return moved

    # ----------------------------------------------------------------- configuration

    def add_peer(self, public_key: bytes, *, preshared_key: bytes | None = None,
                 endpoint: Endpoint | None = None, allowed_ips: Iterable[str] = (),
                 persistent_keepalive: float = 0.0) -> Peer:
        """Add a peer, or update the settings of an existing one without disturbing its sessions."""
        peer = self.peers.get(public_key)
        if peer is None:
            if public_key == self.public_key:
                raise ValueError("a peer cannot have this device's own public key")
            peer = Peer(public_key=public_key, preshared_key=preshared_key or noise.NO_PRESHARED_KEY,
                        static_static=_static_static(self.identity, public_key),
                        cookies=CookieJar(public_key, self.clock))
            self.peers[public_key] = peer
        else:
            peer.preshared_key = preshared_key or noise.NO_PRESHARED_KEY
        if endpoint is not None:
            peer.endpoint = endpoint
        self.allowed_ips.replace(peer, allowed_ips)
        early = self._early_initiations.pop(public_key, None)
        if early is not None and self.clock() - early[2] < REKEY_TIMEOUT:
            self._consume_initiation(memoryview(early[0]), early[1])
        was = peer.persistent_keepalive
        peer.persistent_keepalive = persistent_keepalive
        if persistent_keepalive and not was and peer.endpoint is not None:
            self._send_keepalive(peer)  # as wireguard-go: enabling it sends one at once, opening NAT
        return peer

    def remove_peer(self, public_key: bytes) -> None:
        peer = self.peers.pop(public_key, None)
        if peer is None:
            return
        self.allowed_ips.remove_owner(peer)
        if peer.heard_from is not None:
            self.moved[public_key] = None
        self._zero_keys(peer)
        for name in peer.deadlines:
            peer.deadlines[name] = None

    # ----------------------------------------------------------------- outbound

    def send_packet(self, packet: bytes | memoryview) -> bool:
        """Route an IP packet to its peer by destination (cryptokey routing); False if no peer has it."""
        dest = packet_destination(packet) if len(packet) else None
        peer = self.allowed_ips.lookup(dest) if dest is not None else None
        if peer is None:
            self.dropped["no_route"] += 1
            return False
        self.send_to_peer(peer, packet)
        return True

    def send_to_peer(self, peer: Peer, packet: bytes | memoryview) -> None:
        session = peer.current
        now = self.clock()
        if session is None or now - session.created >= REJECT_AFTER_TIME \
                or session.send_counter >= REJECT_AFTER_MESSAGES:
            peer.staged.append(bytes(packet))
            self._initiate_handshake(peer, retry=False)
            return
        self._encrypt_and_send(peer, session, packet, now)
        self._keep_key_fresh_sending(peer, session, now)

    def _keep_key_fresh_sending(self, peer: Peer, session: Session, now: float) -> None:
        """Rekey before a session wears out: after many messages (either side), or old (initiator)."""
        if session.send_counter > REKEY_AFTER_MESSAGES or (session.is_initiator
                                                           and now - session.created > REKEY_AFTER_TIME):
            self._initiate_handshake(peer, retry=False)

    def _encrypt_and_send(self, peer: Peer, session: Session, packet: bytes | memoryview, now: float) -> None:
        length = len(packet)
        mtu = self.mtu
        # A full packet (every segment of a bulk transfer) or one already a multiple of 16 needs no padding.
        padded = length if length == mtu or (length < mtu and not length & 15) else _padded_length(length, mtu)
        if padded != length:
            packet = bytes(packet) + bytes(padded - length)
        counter = session.send_counter
        session.send_counter = counter + 1
        datagram = bytearray(messages.TRANSPORT_HEADER_SIZE + padded + 16)
        _TRANSPORT.pack_into(datagram, 0, messages.MESSAGE_TRANSPORT, session.remote_index, counter)
        session.sender.encrypt_into(nonce(counter), packet, None,
                                    memoryview(datagram)[messages.TRANSPORT_HEADER_SIZE:])
        if peer.endpoint is None:
            self.dropped["no_endpoint"] += 1
            return
        self.outgoing.append((datagram, peer.endpoint))
        peer.stats.tx_bytes += len(datagram)
        self._authenticated_packet_traversal(peer, now)
        peer.deadlines[SEND_KEEPALIVE] = None  # any authenticated packet sent
        if length:
            if not peer.pending(NEW_HANDSHAKE):
                self._set_timer(peer, NEW_HANDSHAKE, now + KEEPALIVE_TIMEOUT + REKEY_TIMEOUT + self._jitter_s())

    def initiate_handshake(self, public_key: bytes) -> None:
        """Start a handshake with a peer now (rate-limited as any), for a node that has just learned where
        the peer is but not whether the peer still holds a session with it: after a restart the peer's
        session is one this device forgot, and only a handshake of ours replaces it before the peer's own
        timers give up on it (KEEPALIVE_TIMEOUT + REKEY_TIMEOUT, 15 s)."""
        peer = self.peers.get(public_key)
        if peer is not None:
            self._initiate_handshake(peer, retry=False)

    def _send_keepalive(self, peer: Peer) -> None:
        session = peer.current
        if session is None or self.clock() - session.created >= REJECT_AFTER_TIME:
            self._initiate_handshake(peer, retry=False)  # keepalives need a session; make one
            return
        self._encrypt_and_send(peer, session, b"", self.clock())
        self._keep_key_fresh_sending(peer, session, self.clock())

    def _flush_staged(self, peer: Peer) -> bool:
        sent = False
        while peer.staged and peer.current is not None:
            self.send_to_peer(peer, peer.staged.popleft())
            sent = True
        return sent

    # ----------------------------------------------------------------- handshake, initiator side

    def _initiate_handshake(self, peer: Peer, *, retry: bool) -> None:
        now = self.clock()
        if not retry:
            peer.handshake_attempts = 0
        if now - peer.last_initiation_sent < REKEY_TIMEOUT:
            return
        if peer.endpoint is None:
            self.dropped["no_endpoint"] += 1
            return
        peer.last_initiation_sent = now
        if peer.handshake is not None:
            self._index.pop(peer.handshake.local_index, None)
        index = self._new_index(peer)
        msg, peer.handshake = noise.create_initiation(self.identity, peer.public_key, peer.static_static,
                                                      index, tai64n(self.wall_clock()))
        peer.cookies.stamp(msg)
        self.outgoing.append((msg, peer.endpoint))
        self._authenticated_packet_traversal(peer, now)
        peer.deadlines[SEND_KEEPALIVE] = None
        self._set_timer(peer, RETRANSMIT_HANDSHAKE, now + REKEY_TIMEOUT + self._jitter_s())

    def _consume_response(self, data: memoryview, source: Endpoint) -> None:
        receiver = int.from_bytes(data[8:12], "little")
        peer = self._index.get(receiver)
        if not isinstance(peer, Peer) or peer.handshake is None or peer.handshake.local_index != receiver:
            self.dropped["unknown_index"] += 1
            return
        try:
            remote_index, keys = noise.consume_response(peer.handshake, self.identity, peer.preshared_key,
                                                        bytes(data))
        except AuthenticationError:
            self.dropped["auth"] += 1
            return
        now = self.clock()
        local_index = peer.handshake.local_index
        peer.handshake = None
        peer.endpoint = source
        if source != peer.heard_from:
            self._heard_at(peer, source)
        session = Session(peer, keys.send, keys.receive, now, True, local_index, remote_index)
        self._index[local_index] = session
        self._install_session(peer, session)
        self._authenticated_packet_traversal(peer, now)
        peer.deadlines[NEW_HANDSHAKE] = None  # any authenticated packet received
        self._handshake_complete(peer, now)
        if not self._flush_staged(peer):
            self._send_keepalive(peer)  # key confirmation for the responder

    # ----------------------------------------------------------------- handshake, responder side

    def _consume_initiation(self, data: memoryview, source: Endpoint) -> None:
        try:
            consumed = noise.consume_initiation(self.identity, bytes(data))
        except AuthenticationError:
            self.dropped["auth"] += 1
            return
        peer = self.peers.get(consumed.remote_static)
        if peer is None:
            self.dropped["unknown_peer"] += 1
            early = self._early_initiations
            early.pop(consumed.remote_static, None)
            early[consumed.remote_static] = (bytes(data), source, self.clock())
            while len(early) > MAX_EARLY_INITIATIONS:
                early.popitem(last=False)
            return
        now = self.clock()
        if consumed.timestamp <= peer.latest_timestamp:
            self.dropped["replayed_initiation"] += 1
            return
        if now - peer.last_initiation_consumed < HANDSHAKE_INITIATION_RATE:
            self.dropped["initiation_flood"] += 1
            return
        peer.latest_timestamp = consumed.timestamp
        peer.last_initiation_consumed = now
        peer.endpoint = source
        if source != peer.heard_from:
            self._heard_at(peer, source)
        self._authenticated_packet_traversal(peer, now)
        peer.deadlines[NEW_HANDSHAKE] = None

        local_index = self._new_index(peer)
        msg, keys = noise.create_response(consumed.state, peer.public_key, peer.preshared_key, local_index)
        remote_index = consumed.state.remote_index
        session = Session(peer, keys.send, keys.receive, now, False, local_index, remote_index)
        self._index[local_index] = session
        self._install_session(peer, session)
        peer.cookies.stamp(msg)
        self.outgoing.append((msg, source))
        peer.deadlines[SEND_KEEPALIVE] = None

    def _install_session(self, peer: Peer, session: Session) -> None:
        """Place a fresh session as wireguard-go does: initiators use it at once, responders await
        confirmation (the initiator's first packet) before moving it from `next` to `current`."""
        if session.is_initiator:
            if peer.next is not None:
                self._forget(peer.previous)
                peer.previous, peer.next = peer.next, None
                self._forget(peer.current)
            else:
                self._forget(peer.previous)
                peer.previous = peer.current
            peer.current = session
        else:
            self._forget(peer.next)
            peer.next = session
            self._forget(peer.previous)
            peer.previous = None
        self._set_timer(peer, ZERO_KEYS, self.clock() + ZERO_KEYS_AFTER)

    def _handshake_complete(self, peer: Peer, now: float) -> None:
        peer.deadlines[RETRANSMIT_HANDSHAKE] = None
        peer.handshake_attempts = 0
        peer.sent_last_minute_handshake = False
        peer.stats.last_handshake = self.wall_clock()
        log.info("handshake complete", extra={"fields": {"peer": _short(peer.public_key)}})

    def _consume_cookie_reply(self, data: memoryview) -> None:
        receiver = int.from_bytes(data[4:8], "little")
        entry = self._index.get(receiver)
        peer = entry.peer if isinstance(entry, Session) else entry
        if peer is None:
            self.dropped["unknown_index"] += 1
            return
        try:
            peer.cookies.consume_reply(data)
        except AuthenticationError:
            self.dropped["auth"] += 1

    # ----------------------------------------------------------------- inbound

    def receive_datagram(self, data: bytes | bytearray | memoryview, source: Endpoint) -> None:
        """Process one UDP datagram from `source`; decrypted packets land in `incoming`."""
        size = len(data)
        if size < 4:
            self.dropped["malformed"] += 1
            return
        view = data if isinstance(data, memoryview) else memoryview(data)
        kind = int.from_bytes(view[:4], "little")  # type byte plus three zero reserved bytes
        if kind == messages.MESSAGE_TRANSPORT and size >= messages.TRANSPORT_MIN_SIZE:
            self._receive_transport(view, source)
        elif kind == messages.MESSAGE_INITIATION and size == messages.INITIATION_SIZE \
                or kind == messages.MESSAGE_RESPONSE and size == messages.RESPONSE_SIZE:
            if self._handshake_admitted(view, source):
                if kind == messages.MESSAGE_INITIATION:
                    self._consume_initiation(view, source)
                else:
                    self._consume_response(view, source)
        elif kind == messages.MESSAGE_COOKIE_REPLY and size == messages.COOKIE_REPLY_SIZE:
            self._consume_cookie_reply(view)
        else:
            self.dropped["malformed"] += 1

    def sender(self, data: bytes | memoryview, source: Endpoint) -> Peer | Endpoint:
        """Whom a datagram counts against when the driver shares its work fairly: the peer whose session
        a transport message's receiver index names, else the source endpoint. Reads the header only."""
        if len(data) >= messages.TRANSPORT_MIN_SIZE and data[0] == messages.MESSAGE_TRANSPORT:
            entry = self._index.get(int.from_bytes(data[4:8], "little"))
            if type(entry) is Session:
                return entry.peer
        return source

    def _handshake_admitted(self, msg: memoryview, source: Endpoint) -> bool:
        """mac1 always; under load, a per-source rate limit, then mac2 (else answer with a cookie).

        The rate limit comes before the cookie (wireguard-go's order is the reverse) so that a source
        flooding handshake messages costs a mac1 each, not a cookie reply's encryption and send each."""
        if not self.cookie_checker.mac1_valid(msg):
            self.dropped["mac1"] += 1
            return False
        if not self._under_load():
            return True
        if not self.rate_limiter.allow(source[0]):
            self.dropped["rate_limited"] += 1
            return False
        source_bytes = _endpoint_bytes(source)
        if not self.cookie_checker.mac2_valid(msg, source_bytes):
            self.outgoing.append((self.cookie_checker.create_reply(msg, source_bytes), source))
            self.dropped["cookie_sent"] += 1
            return False
        return True

    def _heard_at(self, peer: Peer, source: Endpoint) -> None:
        peer.heard_from = source
        self.moved[peer.public_key] = source

    def _under_load(self) -> bool:
        now = self.clock()
        if now - self._load_window_start >= 1.0:
            self._load_window_start, self._load_count = now, 0
        self._load_count += 1
        if self._load_count > self.load_threshold:
            self._under_load_until = now + UNDER_LOAD_HOLD
        return now < self._under_load_until

    def _receive_transport(self, data: memoryview, source: Endpoint) -> None:
        _, receiver, counter = _TRANSPORT.unpack_from(data)
        session = self._index.get(receiver)
        if type(session) is not Session:
            self.dropped["unknown_index"] += 1
            return
        now = self.clock()
        if now - session.created >= REJECT_AFTER_TIME or not session.replay.check(counter, REJECT_AFTER_MESSAGES):
            self.dropped["replay"] += 1
            return
        try:
            plaintext = session.receiver.decrypt(nonce(counter), data[messages.TRANSPORT_HEADER_SIZE:], None)
        except Exception:
            self.dropped["auth"] += 1
            return
        if not session.replay.update(counter):
            self.dropped["replay"] += 1
            return
        peer: Peer = session.peer
        peer.endpoint = source
        if source != peer.heard_from:
            self._heard_at(peer, source)
        if session is peer.next:
            self._forget(peer.previous)
            peer.previous, peer.current, peer.next = peer.current, session, None
            self._handshake_complete(peer, now)
            self._flush_staged(peer)
        current = peer.current
        if current is not None and current.is_initiator and not peer.sent_last_minute_handshake \
                and now - current.created > _LAST_MINUTE_REKEY_AGE:
            peer.sent_last_minute_handshake = True
            self._initiate_handshake(peer, retry=False)
        peer.stats.rx_bytes += len(data)
        peer.stats.last_received = now
        self._authenticated_packet_traversal(peer, now)
        peer.deadlines[NEW_HANDSHAKE] = None
        if not plaintext:
            return  # keepalive
        if not peer.pending(SEND_KEEPALIVE):
            self._set_timer(peer, SEND_KEEPALIVE, now + KEEPALIVE_TIMEOUT)
        else:
            peer.need_another_keepalive = True
        length, src = inner_length_and_source(plaintext)
        if not 0 < length <= len(plaintext):
            self.dropped["malformed_inner"] += 1
            return
        if self.allowed_ips.lookup(src) is not peer:
            self.dropped["source_not_allowed"] += 1
            return
        self.incoming.append(memoryview(plaintext)[:length] if length != len(plaintext) else plaintext)

    # ----------------------------------------------------------------- timers

    def next_deadline(self) -> float | None:
        """When `tick` next has work (possibly a little early); None if no timer is pending."""
        return self._timers[0][0] if self._timers else None

    def tick(self) -> None:
        """Fire every timer whose deadline has passed."""
        now = self.clock()
        timers = self._timers
        while timers and timers[0][0] <= now:
            when, _, peer, timer = heapq.heappop(timers)
            if peer.armed[timer] != when:
                continue  # superseded by an earlier entry for the same timer
            peer.armed[timer] = None
            deadline = peer.deadlines[timer]
            if deadline is None or self.peers.get(peer.public_key) is not peer:
                continue
            if deadline > now:  # pushed back since armed: re-arm lazily instead of per packet
                self._arm(peer, timer, deadline)
                continue
            peer.deadlines[timer] = None
            self._fire[timer](peer)

    def _set_timer(self, peer: Peer, timer: Timer, deadline: float) -> None:
        peer.deadlines[timer] = deadline
        armed = peer.armed[timer]
        if armed is None or deadline < armed:
            self._arm(peer, timer, deadline)

    def _arm(self, peer: Peer, timer: Timer, when: float) -> None:
        peer.armed[timer] = when
        heapq.heappush(self._timers, (when, next(self._timer_seq), peer, timer))

    def _authenticated_packet_traversal(self, peer: Peer, now: float) -> None:
        if peer.persistent_keepalive:
            self._set_timer(peer, PERSISTENT_KEEPALIVE, now + peer.persistent_keepalive)

    def _on_retransmit_handshake(self, peer: Peer) -> None:
        if peer.handshake_attempts > MAX_TIMER_HANDSHAKES:
            log.info("handshake did not complete, giving up",
                     extra={"fields": {"peer": _short(peer.public_key), "attempts": peer.handshake_attempts + 1}})
            peer.staged.clear()
            peer.deadlines[SEND_KEEPALIVE] = None
            if peer.handshake is not None:
                self._index.pop(peer.handshake.local_index, None)
                peer.handshake = None
            if not peer.pending(ZERO_KEYS):
                self._set_timer(peer, ZERO_KEYS, self.clock() + ZERO_KEYS_AFTER)
            return
        peer.handshake_attempts += 1
        self._initiate_handshake(peer, retry=True)

    def _on_send_keepalive(self, peer: Peer) -> None:
        self._send_keepalive(peer)
        if peer.need_another_keepalive:
            peer.need_another_keepalive = False
            self._set_timer(peer, SEND_KEEPALIVE, self.clock() + KEEPALIVE_TIMEOUT)

    def _on_new_handshake(self, peer: Peer) -> None:
        self._initiate_handshake(peer, retry=False)

    def _on_zero_keys(self, peer: Peer) -> None:
        self._zero_keys(peer)

    def _on_persistent_keepalive(self, peer: Peer) -> None:
        if peer.persistent_keepalive:
            self._send_keepalive(peer)

    # ----------------------------------------------------------------- bookkeeping

    def _zero_keys(self, peer: Peer) -> None:
        peer.staged.clear()
        for session in peer.sessions():
            self._forget(session)
        peer.current = peer.previous = peer.next = None
        if peer.handshake is not None:
            self._index.pop(peer.handshake.local_index, None)
            peer.handshake = None

    def _forget(self, session: Session | None) -> None:
        if session is not None and self._index.get(session.local_index) is session:
            del self._index[session.local_index]

    def _new_index(self, peer: Peer) -> int:
        while True:
            index = int.from_bytes(self.rng(4), "little")
            if index not in self._index:
                self._index[index] = peer
                return index

    def _jitter_s(self) -> float:
        return self._jitter.uniform(0, REKEY_TIMEOUT_JITTER_MAX)


def _static_static(identity: noise.StaticIdentity, public_key: bytes) -> bytes:
    try:
        return dh(identity.private, public_key)
    except AuthenticationError as exc:
        raise ValueError("peer public key is not a usable Curve25519 point") from exc


def _padded_length(length: int, mtu: int) -> int:
    """Pad to a multiple of 16 without exceeding the MTU, as wireguard-go does."""
    last_unit = length % mtu if length > mtu else length
    padded = min((last_unit + 15) & ~15, mtu)
    return length + (padded - last_unit)


def _endpoint_bytes(endpoint: Endpoint) -> bytes:
    """Address+port bytes that a cookie binds to."""
    return ipaddress.ip_address(endpoint[0]).packed + endpoint[1].to_bytes(2, "big")


def _short(key: bytes) -> str:
    import base64

    return base64.b64encode(key).decode()[:8] + "…"
