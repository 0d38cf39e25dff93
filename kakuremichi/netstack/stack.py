"""The sans-IO IPv4 host: packets and a clock in, packets and wake-ups out.

`Stack` owns the local addresses, the TCP connection table, listeners (with bounded accept and SYN
queues), UDP ports, IPv4 reassembly, ICMP, and one timer heap for every connection. What one source
address (one WireGuard peer) makes it hold or send is bounded per source: a full SYN queue or reassembly
budget is taken back from whoever holds the most, and the RSTs and ICMP messages it answers with are
rate-limited per source. A packet that makes a handler fail unexpectedly is dropped and counted (`faults`,
`drops["contained"]`) and never reaches the caller as an exception. The stack never blocks and never
looks at a real clock: the caller passes `now` and drains `outgoing` (packets to put on the link) and
`changed` (connections, listeners and UDP ports whose users should wake up) after each call. Connections
never call back into the stack: after each call it makes into one, the stack `collect`s what the
connection produced (packets and events); the layer above does the same after a user call.
Batching falls out of this shape: a whole batch of received packets produces one list of replies, and
the ACKs owed to a connection leave once per batch (or ride on its data). Within a batch, consecutive
in-order data segments of one connection are joined into one before the connection sees them (`Run`, as
Linux's GRO does): the connection checks, acknowledges and buffers a run once instead of per segment.
"""

from __future__ import annotations

import errno
import heapq
import itertools
import logging
import os
import random
import struct
from collections import Counter, deque
from collections.abc import Callable
from typing import Iterable

from kakuremichi.buckets import TokenBuckets
from kakuremichi.faults import Contained
from kakuremichi.netstack import icmp, ipv4, tcp, udp
from kakuremichi.netstack.checksum import FOLD
from kakuremichi.netstack.ratelimit import answer_limit
from kakuremichi.netstack.tcp import ACK, CLOSED, RST, SYN, TIME_WAIT, Config, Connection

logger = logging.getLogger("kakuremichi.netstack")

EPHEMERAL_PORTS = range(49152, 65536)
DEFAULT_BACKLOG = 128
MAX_TIME_WAIT = 4096  # like Linux's tcp_max_tw_buckets: beyond it the oldest TIME_WAIT goes early
# Events collected as soon as on_segment returns, not with the batch's flush: the next segment of the
# batch must find a terminated connection gone, and a full accept queue full.
_COLLECT_AT_ONCE = tcp.ESTABLISHED_PASSIVE | tcp.TERMINATED
_DATA_FLAGS = (tcp.ACK, tcp.ACK | tcp.PSH)  # a plain data segment; anything else is handled on its own
# A packet's IPv4 + TCP fields that tell whether it continues a run: version/IHL, total length, fragment
# field, protocol, addresses and ports, sequence and acknowledgment numbers, data offset, flags, window.
_RUN_FIELDS = struct.Struct("!BxH2xHxB2x12sIIBBH")
_PLAIN_HEADERS = ipv4.HEADER_LEN + tcp.HEADER_LEN


class Run:
    """Consecutive in-order data segments of one connection held back within a batch, to reach it as one
    segment: same ACK and window fields, no options, each starting where the one before ended. Only a run
    starting at the connection's rcv_nxt is formed, so out-of-order data still gets an ACK per segment
    (the duplicate ACKs a sender without SACK counts on)."""

    __slots__ = ("connection", "first", "payloads", "next_seq", "flags", "addresses")

    def __init__(self, connection: Connection, segment: tcp.Segment, datagram: ipv4.Datagram) -> None:
        self.connection = connection
        self.first = segment
        self.payloads = [segment.payload]
        self.next_seq = (segment.seq + len(segment.payload)) & tcp.MASK
        self.flags = segment.flags
        self.addresses = struct.pack("!IIHH", datagram.source, datagram.destination, segment.source_port,
                                     segment.destination_port)

    def takes(self, packet: bytes | memoryview) -> bool:
        """Whether raw `packet` continues the run (and now belongs to it), told from its headers without
        parsing it: headers without options, not a fragment, the run's addresses, ports, ACK and window,
        the next sequence number, and data. For a link that authenticates its packets (no checksums to
        verify but the IP header's); anything else is left to the full parse."""
        size = len(packet)
        if size <= _PLAIN_HEADERS:
            return False
        (vihl, total, fragment, protocol, addresses, seq, ack, offset, flags,
         window) = _RUN_FIELDS.unpack_from(packet)
        first = self.first
        if (vihl != 0x45 or total != size or fragment & 0x3FFF or protocol != ipv4.PROTO_TCP
                or addresses != self.addresses or seq != self.next_seq or ack != first.ack
                or offset != tcp.HEADER_LEN << 2 or flags not in _DATA_FLAGS or window != first.window):
            return False
        view = memoryview(packet)
        if int.from_bytes(view[:ipv4.HEADER_LEN], "big") % FOLD:
            return False  # the full parse counts it
        self.payloads.append(view[_PLAIN_HEADERS:])
        self.next_seq = (seq + size - _PLAIN_HEADERS) & tcp.MASK
        self.flags |= flags
        return True

    def extends(self, connection: Connection, segment: tcp.Segment) -> bool:
        """Whether `segment` continues the run (and now belongs to it)."""
        first = self.first
        if (connection is not self.connection or segment.seq != self.next_seq or segment.ack != first.ack
                or segment.window != first.window or segment.flags not in _DATA_FLAGS
                or segment.mss is not None or segment.sack_blocks or not segment.payload):
            return False
        self.payloads.append(segment.payload)
        self.next_seq = (segment.seq + len(segment.payload)) & tcp.MASK
        self.flags |= segment.flags
        return True

    def segment(self) -> tcp.Segment:
        """The run as the one segment it amounts to."""
        if len(self.payloads) == 1:
            return self.first
        return self.first._replace(flags=self.flags, payload=memoryview(b"".join(self.payloads)))


def _starts_run(connection: Connection, segment: tcp.Segment) -> bool:
    return (segment.flags in _DATA_FLAGS and connection.state == tcp.ESTABLISHED and bool(segment.payload)
            and segment.seq == connection.rcv_nxt & tcp.MASK and segment.mss is None
            and not segment.sack_blocks and not connection.orphaned)


class Listener:
    """A listening port: handshakes finish in the SYN queue, then wait in the accept queue for the user."""

    def __init__(self, address: int, port: int, backlog: int, opens_per_second: float | None = None) -> None:
        self.address = address  # 0: every local address
        self.port = port
        self.backlog = backlog
        self.syn_backlog = max(2 * backlog, 64)
        # new connections one source may open a second (bursts of as many); None: as many as it likes
        self.opens = None if opens_per_second is None else TokenBuckets(opens_per_second, opens_per_second)
        self.queue: deque[Connection] = deque()
        self.half_open: dict[tuple, Connection] = {}  # oldest first
        self.half_open_by_source: dict[int, dict[tuple, Connection]] = {}  # the same, by remote address
        self.closed = False
        self.user = None  # for the layer above (its wait queue)

    def can_accept(self) -> bool:
        return len(self.queue) < self.backlog and not self.closed

    def add_half_open(self, connection: Connection) -> None:
        self.half_open[connection.key] = connection
        self.half_open_by_source.setdefault(connection.remote[0], {})[connection.key] = connection

    def forget_half_open(self, connection: Connection) -> None:
        if self.half_open.pop(connection.key, None) is not None:
            mine = self.half_open_by_source[connection.remote[0]]
            del mine[connection.key]
            if not mine:
                del self.half_open_by_source[connection.remote[0]]

    def established(self, connection: Connection) -> None:
        self.forget_half_open(connection)
        self.queue.append(connection)
        connection.listener = None

    def accept(self) -> Connection | None:
        return self.queue.popleft() if self.queue else None


class Stack:
    """An IPv4 host with TCP, UDP and ICMP for `addresses` on a link of `mtu` bytes.

    On a link that authenticates every packet (WireGuard's Poly1305 tag covers each byte), TCP and UDP
    checksums of arriving packets are not verified, just as Linux marks packets its wireguard module
    decrypted CHECKSUM_UNNECESSARY: that sum costs more than anything else a receiver does per segment.
    `peer_needs_checksums(address)` says whether the peer at `address` checks them (default: all do); a
    connection to one that does not sends its segments without: the sum was a quarter of an agent's CPU
    in a download.
    """

    def __init__(self, addresses: Iterable, mtu: int, config: Config | None = None, *,
                 secret: bytes | None = None, link_authenticated: bool = False,
                 peer_needs_checksums: Callable[[int], bool] | None = None) -> None:
        self.addresses: list[int] = []  # ordered: the first is the default source
        self._address_set: set[int] = set()
        for address in addresses:
            self.add_address(address)
        self.mtu = mtu
        self.verify_checksums = not link_authenticated
        self.peer_needs_checksums = peer_needs_checksums
        self.config = config or Config()
        self.secret = secret or os.urandom(16)
        self.outgoing: list[bytes] = []
        self.dirty: set[Connection] = set()
        self.changed: set = set()
        self.connections: dict[tuple, Connection] = {}
        self.listeners: dict[tuple[int, int], Listener] = {}
        self.udp_ports: dict[tuple[int, int], udp.Endpoint] = {}
        self.drops: Counter[str] = Counter()
        self.reassembler = ipv4.Reassembler(drops=self.drops)
        self.answers = answer_limit()  # RSTs, ICMP errors and echo replies, per source
        self._now = 0.0  # the caller's clock as of the last call, for `faults`' log interval
        self.faults = Contained(logger, "netstack receive", clock=lambda: self._now)
        self._timers: list = []
        self._timer_order = itertools.count()
        self._time_wait: dict[tuple, Connection] = {}
        self._run: Run | None = None  # data segments of one connection held back within a batch
        self._random = random.Random(int.from_bytes(os.urandom(8), "big"))
        self._ip_ident = self._random.randrange(0x10000)

    # ------------------------------------------------------------------ addresses
    def add_address(self, address) -> None:
        value = ipv4.address(address)
        if value not in self._address_set:
            self._address_set.add(value)
            self.addresses.append(value)

    def remove_address(self, address) -> None:
        """Stop answering for `address`; its connections are reset, every other one carries on."""
        value = ipv4.address(address)
        if value not in self._address_set:
            return
        self._address_set.discard(value)
        self.addresses.remove(value)
        for connection in [c for c in self.connections.values() if c.local[0] == value]:
            connection.error = connection.error or tcp.os_error(errno.EADDRNOTAVAIL, "local address removed")
            connection.abort()
            self.collect(connection)
        for key in [k for k in self.listeners if k[0] == value]:
            self.close_listener(self.listeners[key])
        for key in [k for k in self.udp_ports if k[0] == value]:
            self.udp_close(self.udp_ports[key])

    # ------------------------------------------------------------------ inbound
    def receive(self, packets: Iterable[bytes | memoryview], now: float) -> None:
        """Process a batch of IPv4 packets from the link; replies collect in `outgoing`."""
        local = self._address_set
        self._now = now
        fast = not self.verify_checksums
        for packet in packets:
            if fast and self._run is not None and self._run.takes(packet):
                continue
            try:
                datagram = ipv4.parse(packet)
                if datagram.destination not in local:
                    self.drops["not-for-us"] += 1
                    continue
                source = datagram.source
                if source == 0 or source >= 0xE0000000 or source in local:
                    self.drops["bad-source"] += 1  # multicast, broadcast, unspecified or spoofed as us
                    continue
                if datagram.fragment:
                    datagram = self.reassembler.add(datagram, now)
                    if datagram is None:
                        continue
                protocol = datagram.protocol
                if protocol == ipv4.PROTO_TCP:
                    self._receive_tcp(datagram, now)
                    continue
                if self._run is not None:
                    self._end_run(now)
                if protocol == ipv4.PROTO_UDP:
                    self._receive_udp(datagram, now)
                elif protocol == ipv4.PROTO_ICMP:
                    self._receive_icmp(datagram, now)
                else:
                    self.drops["protocol"] += 1
                    self._icmp_error(datagram, 2, now)  # protocol unreachable
            except ipv4.Malformed as exc:
                self.drops[exc.args[0]] += 1
            except Exception as exc:  # a handler's bug met a hostile packet: drop that packet, go on
                self._contain(exc, packet=bytes(packet[:ipv4.HEADER_LEN]).hex())
        if self._run is not None:
            self._end_run(now)
        self._flush(now)

    def _end_run(self, now: float) -> None:
        """Hand the held-back run to its connection (before anything that arrived after it)."""
        run, self._run = self._run, None
        connection = run.connection
        try:
            connection.on_segment(run.segment(), now)
            if connection.events & _COLLECT_AT_ONCE:
                self.collect(connection)
        except Exception as exc:
            self._contain(exc, connection=None, run_segments=len(run.payloads))

    def _contain(self, exc: Exception, connection: Connection | None = None, **fields: object) -> None:
        """Count and (rate-limited) log an unexpected exception; a connection it happened in is closed,
        since its state may be half-updated."""
        self.drops["contained"] += 1
        if connection is not None:
            fields["connection"] = repr(connection)
        self.faults.record(exc, **fields)
        if connection is not None:
            connection.error = connection.error or tcp.os_error(errno.EPROTO, "connection failed internally")
            connection.terminate(None)
            self.collect(connection)

    def _receive_tcp(self, datagram: ipv4.Datagram, now: float) -> None:
        segment = tcp.parse(datagram, self.verify_checksums)
        key = (datagram.source, segment.source_port, datagram.destination, segment.destination_port)
        connection = self.connections.get(key)
        run = self._run
        if run is not None:
            if run.extends(connection, segment):
                return
            self._end_run(now)
        if connection is not None:
            state = connection.state
            if state == CLOSED:
                self.collect(connection)  # closed by a user call whose caller has not collected it yet
            elif (state == TIME_WAIT and segment.flags & (SYN | ACK | RST) == SYN
                    and (segment.seq - connection.rcv_nxt) & tcp.MASK < tcp.HALF):
                connection.terminate(None)  # a new incarnation may reuse the pair (RFC 9293 §3.6.1)
                self.collect(connection)
            else:
                self.dirty.add(connection)
                if _starts_run(connection, segment):
                    self._run = Run(connection, segment, datagram)
                    return
                connection.on_segment(segment, now)
                if connection.events & _COLLECT_AT_ONCE:
                    self.collect(connection)
                return
        listener = self.listeners.get((datagram.destination, segment.destination_port)) or self.listeners.get(
            (0, segment.destination_port))
        flags = segment.flags
        if listener is not None and flags & (SYN | ACK | RST) == SYN:
            self._passive_open(listener, key, segment, now)
        elif not flags & RST:
            self.drops["tcp-no-connection"] += 1
            if self.answers.allow(datagram.source, now):
                self.outgoing.append(tcp.build_reset(datagram.destination, datagram.source, segment))

    def _passive_open(self, listener: Listener, key: tuple, segment: tcp.Segment, now: float) -> None:
        if listener.opens is not None and not listener.opens.allow(key[0], now):
            # Past its rate a source's SYN is dropped, as a full SYN queue's is: its stack retries after its
            # RTO, so a source opening connections back to back costs little more than one that keeps to it.
            self.drops["syn-rate-limited"] += 1
            return
        if len(listener.half_open) >= listener.syn_backlog:
            # A SYN flood: the source holding the most half-open connections loses its oldest. One source
            # may use the whole queue while nobody else needs it (an agent's connections all come from its
            # gateway), but its flood cannot push out another source's handshakes. No RST now: under a
            # flood the source is likely forged (an RST would be backscatter); a real client's ACK finds
            # no connection and is reset then.
            self.drops["syn-queue-full"] += 1
            heaviest = max(listener.half_open_by_source.values(), key=len)
            victim = next(iter(heaviest.values()))
            victim.terminate(None)
            self.collect(victim)
        local, remote = (key[2], key[3]), (key[0], key[1])
        iss = tcp.initial_sequence(self.secret, local, remote, now)
        connection = self._connection(local, remote, iss, now)
        connection.listener = listener
        listener.add_half_open(connection)
        self.connections[key] = connection
        connection.accept(segment, now)
        self.dirty.add(connection)

    def _receive_udp(self, datagram: ipv4.Datagram, now: float) -> None:
        message = udp.parse(datagram, self.verify_checksums)
        endpoint = self.udp_ports.get((datagram.destination, message.destination_port)) or self.udp_ports.get(
            (0, message.destination_port))
        if endpoint is None:
            self.drops["udp-no-port"] += 1
            self._icmp_error(datagram, icmp.PORT_UNREACHABLE, now)
        elif endpoint.deliver(message):
            self._notify(endpoint)
        else:
            self.drops["udp-queue-full"] += 1

    def _receive_icmp(self, datagram: ipv4.Datagram, now: float) -> None:
        reply = icmp.answer_echo(datagram)
        if reply is not None:
            if self.answers.allow(datagram.source, now):
                self.outgoing.append(reply)
            else:
                self.drops["echo-rate-limited"] += 1
            return
        error = icmp.parse_error(datagram)
        if error is None or error.protocol != ipv4.PROTO_TCP:
            self.drops["icmp-ignored"] += 1
            return
        connection = self.connections.get((error.destination, error.destination_port, error.source,
                                           error.source_port))
        if connection is None:
            return
        if error.code == icmp.FRAGMENTATION_NEEDED and error.mtu:
            mss = max(error.mtu - ipv4.HEADER_LEN - tcp.HEADER_LEN, tcp.MIN_MSS)
            if mss < connection.snd_mss:
                connection.snd_mss = mss  # path MTU discovery (RFC 1191)
        elif connection.state == tcp.SYN_SENT and error.code in (2, icmp.PORT_UNREACHABLE):
            connection.terminate(tcp.os_error(errno.ECONNREFUSED, "connection refused (ICMP unreachable)"))
            self.collect(connection)

    def _icmp_error(self, datagram: ipv4.Datagram, code: int, now: float) -> None:
        """An ICMP unreachable, rate-limited per source so that a flood cannot turn us into an amplifier."""
        if self.answers.allow(datagram.source, now):
            self.outgoing.append(icmp.unreachable(datagram, code))

    def _connection(self, local: tuple[int, int], remote: tuple[int, int], iss: int, now: float) -> Connection:
        connection = Connection(self.config, local, remote, iss, self.mtu, now)
        if self.peer_needs_checksums is not None:
            connection.checksums = self.peer_needs_checksums(remote[0])
        return connection

    # ------------------------------------------------------------------ TCP user calls
    def connect(self, address, port: int, now: float, *, local_address=None) -> Connection:
        """Active open to `address:port` from an ephemeral port; the SYN is queued at once."""
        remote = (ipv4.address(address), port)
        source = ipv4.address(local_address) if local_address is not None else self._default_source()
        if source not in self._address_set:
            raise OSError(errno.EADDRNOTAVAIL, f"{tcp.ipv4_str(source)} is not one of this stack's addresses")
        local_port = self._ephemeral_port(source, remote)
        local = (source, local_port)
        connection = self._connection(local, remote, tcp.initial_sequence(self.secret, local, remote, now), now)
        self.connections[connection.key] = connection
        connection.connect(now)
        self.dirty.add(connection)
        return connection

    def _default_source(self) -> int:
        if not self.addresses:
            raise OSError(errno.EADDRNOTAVAIL, "the stack has no address")
        return self.addresses[0]

    def _ephemeral_port(self, source: int, remote: tuple[int, int]) -> int:
        """A random free port (RFC 6056): unique for this 4-tuple and not a listening port."""
        span = len(EPHEMERAL_PORTS)
        start = self._random.randrange(span)
        for i in range(span):
            port = EPHEMERAL_PORTS[(start + i) % span]
            if ((remote[0], remote[1], source, port) not in self.connections
                    and (source, port) not in self.listeners and (0, port) not in self.listeners):
                return port
        raise OSError(errno.EADDRNOTAVAIL, "no free local port for this destination")

    def listen(self, port: int, *, address=None, backlog: int = DEFAULT_BACKLOG,
               opens_per_second: float | None = None) -> Listener:
        local = ipv4.address(address) if address is not None else 0
        if local and local not in self._address_set:
            raise OSError(errno.EADDRNOTAVAIL, f"{tcp.ipv4_str(local)} is not one of this stack's addresses")
        if not 0 < port < 65536:
            raise ValueError(f"port must be 1-65535, not {port}")
        if (local, port) in self.listeners or (0, port) in self.listeners:
            raise OSError(errno.EADDRINUSE, f"TCP port {port} is already listening")
        listener = self.listeners[(local, port)] = Listener(local, port, max(backlog, 1), opens_per_second)
        return listener

    def close_listener(self, listener: Listener) -> None:
        """Stop listening: half-open handshakes vanish, never-accepted connections are reset."""
        if self.listeners.get((listener.address, listener.port)) is listener:
            del self.listeners[(listener.address, listener.port)]
        listener.closed = True
        for connection in list(listener.half_open.values()):
            connection.terminate(None)
            self.collect(connection)
        while listener.queue:
            connection = listener.queue.popleft()
            connection.abort()
            self.collect(connection)
        self._notify(listener)

    # ------------------------------------------------------------------ UDP
    def udp_bind(self, port: int = 0, *, address=None,
                 queue_bytes: int = udp.DEFAULT_QUEUE_BYTES) -> udp.Endpoint:
        local = ipv4.address(address) if address is not None else 0
        if local and local not in self._address_set:
            raise OSError(errno.EADDRNOTAVAIL, f"{tcp.ipv4_str(local)} is not one of this stack's addresses")
        if port == 0:
            span = len(EPHEMERAL_PORTS)
            start = self._random.randrange(span)
            port = next((EPHEMERAL_PORTS[(start + i) % span] for i in range(span)
                         if (local, EPHEMERAL_PORTS[(start + i) % span]) not in self.udp_ports
                         and (0, EPHEMERAL_PORTS[(start + i) % span]) not in self.udp_ports), 0)
            if not port:
                raise OSError(errno.EADDRINUSE, "no free UDP port")
        elif (local, port) in self.udp_ports or (0, port) in self.udp_ports:
            raise OSError(errno.EADDRINUSE, f"UDP port {port} is already bound")
        endpoint = self.udp_ports[(local, port)] = udp.Endpoint(local, port, queue_bytes)
        return endpoint

    def udp_send(self, endpoint: udp.Endpoint, payload: bytes | memoryview, address, port: int) -> None:
        """Queue one datagram, fragmented if it exceeds the MTU."""
        if endpoint.closed:
            raise OSError(errno.EBADF, "UDP socket is closed")
        if len(payload) > udp.MAX_PAYLOAD:
            raise OSError(errno.EMSGSIZE, f"UDP payload of {len(payload)} bytes exceeds {udp.MAX_PAYLOAD}")
        destination = ipv4.address(address)
        source = endpoint.address or self._default_source()
        message = udp.build(source, endpoint.port, destination, port, payload)
        self._ip_ident = (self._ip_ident + 1) & 0xFFFF
        self.outgoing.extend(ipv4.fragment(source, destination, ipv4.PROTO_UDP, message, self.mtu,
                                           ident=self._ip_ident))

    def udp_close(self, endpoint: udp.Endpoint) -> None:
        if self.udp_ports.get((endpoint.address, endpoint.port)) is endpoint:
            del self.udp_ports[(endpoint.address, endpoint.port)]
        endpoint.closed = True
        self._notify(endpoint)

    # ------------------------------------------------------------------ timers and output
    def _notify(self, item) -> None:
        """Report a connection, listener or UDP port whose user (the layer above) should wake up."""
        if item.user is not None:
            self.changed.add(item)

    def _schedule(self, connection: Connection) -> None:
        """Make sure the timer heap holds an entry no later than the connection's deadline."""
        deadline = connection.deadline
        if deadline is None:
            return
        queued = connection.queued_deadline
        if queued is not None and queued <= deadline:
            return
        connection.queued_deadline = deadline
        heapq.heappush(self._timers, (deadline, next(self._timer_order), connection))
        if len(self._timers) > 4 * len(self.connections) + 64:
            self._compact_timers()  # superseded entries of closed or rescheduled connections

    def collect(self, connection: Connection) -> None:
        """Take what `connection` produced since it was last collected: its packets, its events, its new
        deadline. The stack does it after each call it makes into the connection; the layer above must do
        it after each user call (send, receive, shutdown, close, abort, set_keepalive) so that the work
        the call queued is flushed."""
        packets = connection.outgoing
        if packets:
            self.outgoing += packets
            packets.clear()
        events = connection.events
        if events:
            connection.events = 0
            if events & tcp.NEEDS_FLUSH:
                self.dirty.add(connection)
            if events & tcp.ESTABLISHED_PASSIVE and connection.listener is not None:
                listener = connection.listener
                listener.established(connection)
                self._notify(listener)
            if events & tcp.WAKE:
                self._notify(connection)
            if events & tcp.ENTERED_TIME_WAIT:
                self._time_wait[connection.key] = connection
                if len(self._time_wait) > MAX_TIME_WAIT:
                    oldest = next(iter(self._time_wait.values()))
                    oldest.terminate(None)
                    self.collect(oldest)
            if events & tcp.TERMINATED:
                self._forget(connection)
        self._schedule(connection)

    def _forget(self, connection: Connection) -> None:
        if self.connections.get(connection.key) is connection:
            del self.connections[connection.key]
        self._time_wait.pop(connection.key, None)
        if connection.listener is not None:
            connection.listener.forget_half_open(connection)
        self.dirty.discard(connection)

    def poll(self, now: float) -> None:
        """Fire due timers and send whatever user calls queued."""
        self._now = now
        timers = self._timers
        while timers and timers[0][0] <= now:
            deadline, _, connection = heapq.heappop(timers)
            if connection.queued_deadline != deadline:
                continue  # superseded by an earlier entry
            connection.queued_deadline = None
            if connection.state == CLOSED:
                continue
            if connection.deadline is not None and connection.deadline <= now:
                try:
                    connection.on_timer(now)
                    self.collect(connection)
                except Exception as exc:
                    self._contain(exc, connection)
            else:
                self._schedule(connection)
        if self.reassembler:
            self.reassembler.expire(now)
        self._flush(now)

    def _compact_timers(self) -> None:
        live = [entry for entry in self._timers
                if entry[2].state != CLOSED and entry[2].queued_deadline == entry[0]]
        heapq.heapify(live)
        self._timers = live

    def _flush(self, now: float) -> None:
        dirty, self.dirty = self.dirty, set()
        for connection in dirty:
            try:
                connection.flush(now)
                self.collect(connection)
            except Exception as exc:
                self._contain(exc, connection)

    def next_deadline(self) -> float | None:
        """When `poll` must run next, or None if no timer is pending."""
        deadline = self._timers[0][0] if self._timers else None
        if self.reassembler:
            other = self.reassembler.next_deadline()
            if other is not None and (deadline is None or other < deadline):
                deadline = other
        return deadline

    def take_outgoing(self) -> list[bytes]:
        packets, self.outgoing = self.outgoing, []
        return packets

    def take_changed(self) -> set:
        changed, self.changed = self.changed, set()
        return changed
