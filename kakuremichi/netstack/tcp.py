"""TCP (RFC 9293): one sans-IO state machine per connection, fed segments and a clock, emitting packets.

What it implements, and where from:
- the state machine and segment-arrival rules of RFC 9293 §3.10, with RFC 5961's challenge ACKs for
  in-window RSTs and SYNs;
- MSS (derived from the link MTU), window scaling (RFC 7323) and SACK (RFC 2018): SACK blocks are sent
  for out-of-order data and, when sending, used to retransmit only the holes during recovery;
- the retransmission timer of RFC 6298 (Karn's rule, exponential backoff), fast retransmit and NewReno
  congestion control (RFC 5681/6582), initial window of RFC 6928, limited transmit (RFC 3042);
- loss recovery that does not wait for timeouts on a lossy path: with SACK, RFC 6675's pipe-driven
  recovery, tail loss probes and a RACK-style reordering timer (RFC 8985), early retransmit for small
  flights (RFC 5827), and detection of lost retransmissions; without SACK, NewReno's partial ACKs;
- delayed ACKs (at least every second full segment, or after `delayed_ack`), receiver and sender silly
  window avoidance, Nagle in Minshall's form when `nodelay` is off, zero-window probing, keepalive,
  TIME_WAIT, FIN/half-close, and an RST wherever the RFC calls for one.

Sequence numbers are kept "unwrapped" as unbounded ints (32-bit values from the wire are expanded next to
the variable they compare against), so every comparison is a plain `<`. Packets are built from a per
connection header template with the checksums summed as integers (see checksum.py), so a data segment
costs one struct.pack and one join.

The pieces with arithmetic of their own live beside it: rtt.py (RFC 6298 estimator), congestion.py (the
window), scoreboard.py (what the peer SACKed) and out_of_order.py (what we hold above rcv_nxt). The
fields read for every segment (sequence numbers, windows, timers, Karn's timed segment, recovery flags)
stay on the Connection: reaching them through another object costs an attribute load each in CPython.
"""

from __future__ import annotations

import enum
import errno
import hashlib
import struct
from dataclasses import dataclass, replace
from typing import NamedTuple

from kakuremichi.netstack import ipv4
from kakuremichi.netstack.checksum import FOLD, finish, partial, pseudo_header, verify
from kakuremichi.netstack.congestion import CongestionWindow
from kakuremichi.netstack.out_of_order import OutOfOrder
from kakuremichi.netstack.receivebuffer import ReceiveBuffer
from kakuremichi.netstack.rtt import RttEstimator
from kakuremichi.netstack.scoreboard import MAX_RANGES, Scoreboard
from kakuremichi.netstack.sendbuffer import SendBuffer

FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10  # URG is not used: urgent data is plain data
MASK = 0xFFFFFFFF
HALF = 0x80000000
HEADER_LEN = 20
MIN_MSS = 88  # a peer announcing less would make us send floods of tiny segments
DEFAULT_MSS = 536  # RFC 9293 §3.7.1, when the peer sends no MSS option
MAX_WSCALE = 14

_HEADERS = struct.Struct("!HHHHHHIIHHIIHHHH")  # IPv4 + TCP, no options
_TCP = struct.Struct("!HHIIHHHH")
_IP_CONSTANT = 0x4500 + 0x4000 + (ipv4.DEFAULT_TTL << 8 | ipv4.PROTO_TCP)
_RETRANSMIT, _PERSIST, _PROBE, _REORDER = 0, 1, 2, 3  # what the retransmission timer does when it fires
WORST_CASE_DELAYED_ACK = 0.2  # RFC 8985 §7.2, added to the probe timeout when one segment is in flight
MIN_PROBE_TIMEOUT = 0.01

# Bits of `Connection.events`: what a call did that the caller (the stack) acts on when it collects them.
NEEDS_FLUSH = 1  # a user call queued work (data, a FIN, a window update): flush the connection
WAKE = 2  # readable, writable, established or closed: wake the user's waiting tasks
ESTABLISHED_PASSIVE = 4  # SYN_RECEIVED became ESTABLISHED: a listener's connection joins its accept queue
ENTERED_TIME_WAIT = 8
TERMINATED = 16  # CLOSED: drop it from every table


class State(enum.IntEnum):
    CLOSED = 0
    SYN_SENT = 1
    SYN_RECEIVED = 2
    ESTABLISHED = 3
    FIN_WAIT_1 = 4
    FIN_WAIT_2 = 5
    CLOSE_WAIT = 6
    CLOSING = 7
    LAST_ACK = 8
    TIME_WAIT = 9


CLOSED, SYN_SENT, SYN_RECEIVED, ESTABLISHED, FIN_WAIT_1, FIN_WAIT_2, CLOSE_WAIT, CLOSING, LAST_ACK, TIME_WAIT = State
_CAN_RECEIVE = (ESTABLISHED, FIN_WAIT_1, FIN_WAIT_2)  # states where segment text is accepted
_USER_SEND = (SYN_SENT, SYN_RECEIVED, ESTABLISHED, CLOSE_WAIT)  # states where the user may queue data


@dataclass
class Config:
    """Tunables; the defaults suit a WireGuard tunnel (tens of ms RTT, MTU 1420).

    The buffers are caps, not allocations: an idle connection holds none of it. 4 MiB (Linux's largest
    autotuned send buffer) keeps a 30 ms path full at 1 Gbit/s; 256 KiB held the same path to 70 Mbit/s and
    even a loopback tunnel to 0.55x wireguard-go, against 0.65-1.0x with 4 MiB.
    """

    receive_buffer: int = 4 * 1024 * 1024
    send_buffer: int = 4 * 1024 * 1024
    initial_rto: float = 1.0
    min_rto: float = 0.2  # RFC 6298 says 1 s; every major stack uses ~200 ms
    max_rto: float = 60.0
    syn_retries: int = 6
    synack_retries: int = 5
    data_retries: int = 15
    delayed_ack: float = 0.04
    msl: float = 30.0  # TIME_WAIT lasts 2 MSL
    keepalive_idle: float | None = None  # RFC 1122: keepalive off unless asked for
    keepalive_interval: float = 75.0
    keepalive_count: int = 9
    nodelay: bool = True  # like trio.SocketStream; False enables Nagle (Minshall's variant)
    sack: bool = True
    window_scaling: bool = True


class Segment(NamedTuple):
    """A validated incoming TCP segment; option fields are None when absent."""

    source_port: int
    destination_port: int
    seq: int
    ack: int
    flags: int
    window: int
    mss: int | None
    wscale: int | None
    sack_permitted: bool
    sack_blocks: tuple[tuple[int, int], ...]
    payload: memoryview


def parse(datagram: ipv4.Datagram, verify_checksum: bool = True) -> Segment:
    """Validate one TCP segment (length, checksum unless the link vouches for it, options); raises
    ipv4.Malformed."""
    data = datagram.payload
    size = len(data)
    if size < HEADER_LEN:
        raise ipv4.Malformed("truncated")
    sport, dport, seq, ack, offflags, window, _, _ = _TCP.unpack_from(data)
    header_len = (offflags >> 12) << 2
    if header_len < HEADER_LEN or header_len > size:
        raise ipv4.Malformed("bad-length")
    if verify_checksum and not verify(pseudo_header(datagram.source, datagram.destination, ipv4.PROTO_TCP, size)
                                      + partial(data)):
        raise ipv4.Malformed("bad-checksum")
    if header_len == HEADER_LEN:
        return Segment(sport, dport, seq, ack, offflags & 0x3F, window, None, None, False, (), data[HEADER_LEN:])
    mss, wscale, sack_ok, blocks = _parse_options(data[HEADER_LEN:header_len])
    return Segment(sport, dport, seq, ack, offflags & 0x3F, window, mss, wscale, sack_ok, blocks,
                   data[header_len:])


def _parse_options(options: memoryview) -> tuple[int | None, int | None, bool, tuple]:
    mss = wscale = None
    sack_ok = False
    blocks: tuple = ()
    i, end = 0, len(options)
    while i < end:
        kind = options[i]
        if kind == 0:
            break
        if kind == 1:
            i += 1
            continue
        if i + 1 >= end or options[i + 1] < 2 or i + options[i + 1] > end:
            raise ipv4.Malformed("bad-options")
        length = options[i + 1]
        if kind == 2:
            if length != 4:
                raise ipv4.Malformed("bad-options")
            mss = int.from_bytes(options[i + 2:i + 4], "big")
        elif kind == 3:
            if length != 3:
                raise ipv4.Malformed("bad-options")
            wscale = min(options[i + 2], MAX_WSCALE)  # RFC 7323 §2.3: clamp and carry on
        elif kind == 4:
            if length != 2:
                raise ipv4.Malformed("bad-options")
            sack_ok = True
        elif kind == 5:
            if (length - 2) % 8:
                raise ipv4.Malformed("bad-options")
            words = struct.unpack_from(f"!{(length - 2) // 4}I", options, i + 2)
            blocks = tuple(zip(words[::2], words[1::2]))
        i += length
    return mss, wscale, sack_ok, blocks


def build_reset(source: int, destination: int, segment: Segment) -> bytes:
    """The RST answering `segment` when no connection owns it (RFC 9293 §3.10.7.1)."""
    if segment.flags & ACK:
        seq, ack, flags = segment.ack, 0, RST
    else:
        seq = 0
        ack = (segment.seq + len(segment.payload) + (segment.flags & SYN and 1) + (segment.flags & FIN)) & MASK
        flags = RST | ACK
    return _raw_segment(source, destination, segment.destination_port, segment.source_port, seq, ack, flags)


def _raw_segment(source: int, destination: int, sport: int, dport: int, seq: int, ack: int, flags: int,
                 window: int = 0) -> bytes:
    offflags = HEADER_LEN << 10 | flags
    total = pseudo_header(source, destination, ipv4.PROTO_TCP, HEADER_LEN) + sport + dport + seq + ack + offflags
    header = _TCP.pack(sport, dport, seq, ack, offflags, window, finish(total + window), 0)
    return ipv4.build(source, destination, ipv4.PROTO_TCP, header)


def initial_sequence(secret: bytes, local: tuple[int, int], remote: tuple[int, int], now: float) -> int:
    """RFC 6528: a keyed hash of the 4-tuple plus a 4 µs clock, so ISNs are unguessable yet monotonic."""
    digest = hashlib.blake2s(struct.pack("!IHIH", *local, *remote), key=secret, digest_size=4).digest()
    return (int.from_bytes(digest, "big") + int(now * 250_000)) & MASK


def os_error(code: int, message: str) -> OSError:
    """The OSError subclass Python raises for `code`, so callers can catch ConnectionResetError etc."""
    cls = {errno.ECONNREFUSED: ConnectionRefusedError, errno.ECONNRESET: ConnectionResetError,
           errno.ETIMEDOUT: TimeoutError, errno.ECONNABORTED: ConnectionAbortedError}.get(code, OSError)
    return cls(code, message)


class Connection:
    """One TCP connection. It never calls out: whoever calls it (the stack) takes its output afterwards,
    as smoltcp's sockets hand their packets to the interface: `outgoing` (packets to put on the link),
    `events` (NEEDS_FLUSH, WAKE... bits, reset by the taker) and `deadline` (when `on_timer` must run).

    User side: `send`, `receive`, `shutdown` (half-close), `close`, `abort`; `error`, `eof_received`,
    `send_space`. After `on_segment`, and after a user call that raised NEEDS_FLUSH, the caller must
    `flush` the connection (the stack does it once per batch) so that ACKs and data leave together.
    """

    __slots__ = (
        "outgoing", "events", "config", "local", "remote", "key", "ip_words", "state", "error", "listener",
        "orphaned",
        # send side
        "iss", "snd_una", "snd_nxt", "snd_max", "snd_wnd", "snd_wl1", "snd_wl2", "max_snd_wnd", "snd_wscale",
        "snd_mss", "snd_buf", "fin_queued", "sack_ok", "scoreboard", "nodelay", "checksums",
        # congestion control
        "congestion", "dupacks", "in_recovery", "recover", "rexmit_next", "rexmits",
        # RTT and timers
        "rtt", "retries", "rtt_seq", "rtt_time", "timer_rto", "timer_kind",
        "probe_sent",
        "timer_ack", "timer_idle", "last_heard", "probes", "deadline",
        # receive side
        "irs", "rcv_nxt", "rcv_adv", "rcv_wscale", "rcv_mss", "rcv_buf", "rcv_cap", "ooo", "fin_at",
        "eof_received", "ack_now", "unacked",
        # heap bookkeeping
        "queued_deadline", "user",
    )

    def __init__(self, config: Config, local: tuple[int, int], remote: tuple[int, int], iss: int, mtu: int,
                 now: float) -> None:
        self.outgoing: list[bytes] = []
        self.events = 0
        self.config = config
        self.local = local
        self.remote = remote
        self.key = (remote[0], remote[1], local[0], local[1])
        src, dst = local[0], remote[0]
        # The IPv4 header's fixed words summed once: a segment's header checksum adds only its length.
        self.ip_words = _IP_CONSTANT + (src >> 16) + (src & 0xFFFF) + (dst >> 16) + (dst & 0xFFFF)
        self.state = CLOSED
        self.error: OSError | None = None
        self.listener = None
        self.orphaned = False
        self.iss = iss
        self.snd_una = self.snd_nxt = self.snd_max = iss
        self.snd_wnd = self.snd_wl1 = self.snd_wl2 = self.max_snd_wnd = 0
        self.snd_wscale = 0
        self.rcv_mss = max(mtu - ipv4.HEADER_LEN - HEADER_LEN, MIN_MSS)
        self.snd_mss = min(DEFAULT_MSS, self.rcv_mss)
        self.snd_buf = SendBuffer(iss + 1)
        self.fin_queued = False
        self.sack_ok = False
        self.scoreboard = Scoreboard()
        self.nodelay = config.nodelay
        self.checksums = True  # False: the peer's stack does not check them (Stack.peer_needs_checksums)
        self.congestion = CongestionWindow(config.send_buffer)
        self.dupacks = 0
        self.in_recovery = False
        self.recover = iss
        self.rexmit_next = iss
        self.rexmits: list[list[int]] = []  # [start, end, snd_max when resent] of holes resent in recovery
        self.rtt = RttEstimator(config.initial_rto, config.min_rto, config.max_rto)
        self.retries = 0
        self.rtt_seq: int | None = None
        self.rtt_time = 0.0
        self.timer_rto: float | None = None
        self.timer_kind = _RETRANSMIT
        self.probe_sent = False
        self.timer_ack: float | None = None
        self.timer_idle: float | None = None
        self.last_heard = now
        self.probes = 0
        self.deadline: float | None = None
        self.irs = 0
        self.rcv_nxt = self.rcv_adv = 0
        self.rcv_cap = config.receive_buffer
        self.rcv_wscale = 0
        if config.window_scaling:
            while self.rcv_wscale < MAX_WSCALE and (0xFFFF << self.rcv_wscale) < self.rcv_cap:
                self.rcv_wscale += 1
        self.rcv_buf = ReceiveBuffer()
        self.ooo = OutOfOrder()
        self.fin_at: int | None = None  # sequence number of the peer's FIN once seen (in or out of order)
        self.eof_received = False
        self.ack_now = False
        self.unacked = 0
        self.queued_deadline: float | None = None
        self.user = None  # for the layer above (its wait queues)

    def __repr__(self) -> str:
        return (f"<tcp {ipv4_str(self.local[0])}:{self.local[1]} -> {ipv4_str(self.remote[0])}:{self.remote[1]}"
                f" {self.state.name}>")

    # ------------------------------------------------------------------ opening
    def connect(self, now: float) -> None:
        """Active open: send a SYN."""
        self.state = SYN_SENT
        self._send_syn(now)

    def accept(self, segment: Segment, now: float) -> None:
        """Passive open from a listener's SYN: answer with SYN-ACK and wait in SYN_RECEIVED."""
        self.state = SYN_RECEIVED
        self._take_syn_options(segment)
        self._send_syn(now)

    def _take_syn_options(self, segment: Segment) -> None:
        self.irs = segment.seq
        self.rcv_nxt = segment.seq + 1
        self.rcv_adv = self.rcv_nxt + min(self.rcv_cap, 0xFFFF)
        self.snd_mss = max(MIN_MSS, min(segment.mss or DEFAULT_MSS, self.rcv_mss))
        if segment.wscale is not None and self.config.window_scaling:
            self.snd_wscale = segment.wscale
        else:
            self.rcv_wscale = 0
        self.sack_ok = segment.sack_permitted and self.config.sack
        self.snd_wnd = self.max_snd_wnd = segment.window  # never scaled in a SYN
        self.snd_wl1, self.snd_wl2 = segment.seq, segment.ack
        self.congestion.start(self.snd_mss)

    def _send_syn(self, now: float) -> None:
        options = struct.pack("!BBH", 2, 4, self.rcv_mss)
        if self.state == SYN_SENT:
            if self.config.sack:
                options += b"\x01\x01\x04\x02"
            if self.config.window_scaling:
                options += bytes((1, 3, 3, self.rcv_wscale))
            self._emit(self.iss, SYN, b"", options)
        else:
            if self.sack_ok:
                options += b"\x01\x01\x04\x02"
            if self.snd_wscale or self.rcv_wscale:
                options += bytes((1, 3, 3, self.rcv_wscale))
            self._emit(self.iss, SYN | ACK, b"", options)
        self.snd_nxt = self.snd_max = self.iss + 1
        if self.rtt_seq is None and not self.retries:
            self.rtt_seq, self.rtt_time = self.iss, now
        self.timer_kind = _RETRANSMIT
        self.timer_rto = now + self.rtt.timeout()

    # ------------------------------------------------------------------ user calls
    @property
    def send_space(self) -> int:
        if self.fin_queued or self.state not in _USER_SEND:
            return 0
        return max(self.config.send_buffer - len(self.snd_buf), 0)

    def send(self, data: bytes | bytearray | memoryview) -> int:
        """Queue as much of `data` as the send buffer takes; returns how much."""
        if self.fin_queued or self.state not in _USER_SEND:
            raise self.error or os_error(errno.EPIPE, "connection closed for sending")
        room = self.config.send_buffer - len(self.snd_buf)
        if room <= 0:
            return 0
        chunk = data[:room]
        self.snd_buf.append(chunk)
        self.events |= NEEDS_FLUSH
        return len(chunk)

    def receive(self, max_bytes: int) -> bytes:
        """Take up to `max_bytes` of in-order data (empty at EOF or when nothing waits)."""
        data = self.rcv_buf.take(max_bytes)
        if data and self.state in _CAN_RECEIVE:
            # Window update when the window we advertised has become small and reading doubled it.
            advertised = self.rcv_adv - self.rcv_nxt
            opened = self.rcv_cap - len(self.rcv_buf)
            if 2 * advertised <= self.rcv_cap and opened >= 2 * advertised + self.rcv_mss:
                self.ack_now = True
                self.events |= NEEDS_FLUSH
        return data

    def set_keepalive(self, idle: float | None, interval: float, count: int) -> None:
        """Probe after `idle` seconds of silence, every `interval`; give up after `count` probes."""
        self.config = replace(self.config, keepalive_idle=idle, keepalive_interval=interval, keepalive_count=count)
        self.events |= NEEDS_FLUSH

    def shutdown(self) -> None:
        """Half-close: a FIN follows the data already queued."""
        if self.fin_queued or self.state in (CLOSED, TIME_WAIT):
            return
        if self.state == SYN_SENT:
            self.terminate(None)
            return
        self.fin_queued = True
        self.events |= NEEDS_FLUSH

    def close(self) -> None:
        """Full close by the user: FIN, or RST if unread data would otherwise be silently lost (RFC 2525)."""
        self.orphaned = True
        if self.rcv_buf and self.state not in (CLOSED, TIME_WAIT):
            self.abort()
            return
        self.shutdown()

    def abort(self) -> None:
        """Reset the connection now."""
        if self.state in (SYN_RECEIVED, ESTABLISHED, FIN_WAIT_1, FIN_WAIT_2, CLOSE_WAIT):
            self._emit(self.snd_nxt, RST | ACK)
        self.terminate(self.error or os_error(errno.ECONNABORTED, "connection aborted"))

    # ------------------------------------------------------------------ segment arrival (RFC 9293 §3.10.7)
    def on_segment(self, seg: Segment, now: float) -> None:
        if self.state == SYN_SENT:
            self._on_segment_syn_sent(seg, now)
            return
        flags = seg.flags
        payload = seg.payload
        seq = self.rcv_nxt + ((seg.seq - self.rcv_nxt + HALF) & MASK) - HALF
        if self.state == TIME_WAIT:
            self._on_segment_time_wait(seg, seq, now)
            return
        if self.state == SYN_RECEIVED and flags & (SYN | ACK) == SYN and seq == self.irs:
            self._send_syn(now)  # our SYN-ACK was lost and the peer repeats its SYN
            return
        length = len(payload) + (flags & SYN and 1) + (flags & FIN)
        window = self.rcv_adv - self.rcv_nxt
        if window > 0:
            window += 1 << self.rcv_wscale  # the advertised field was rounded up to a scale unit
        # 1. sequence number check
        if length == 0:
            ok = seq == self.rcv_nxt if window <= 0 else self.rcv_nxt <= seq < self.rcv_nxt + window
        elif window <= 0:
            ok = False
        else:
            end = seq + length - 1
            ok = (self.rcv_nxt <= seq < self.rcv_nxt + window) or (self.rcv_nxt <= end < self.rcv_nxt + window)
        if not ok:
            if not flags & RST:
                self._send_ack()
                if window <= 0 and seq == self.rcv_nxt and flags & ACK:
                    self._process_ack(seg, now)  # a zero window still takes ACKs (RFC 9293 §3.10.7.4)
            return
        self.last_heard = now
        self.probes = 0
        # 2. RST (RFC 5961 §3: only an exact match resets; in-window gets a challenge ACK)
        if flags & RST:
            if seq != self.rcv_nxt:
                self._send_ack()
            elif self.state == SYN_RECEIVED and self.listener is not None:
                self.terminate(None)  # back to LISTEN: the listener never saw this one
            elif self.state in (CLOSING, LAST_ACK):
                self.terminate(None)
            else:
                self.terminate(os_error(errno.ECONNRESET, "connection reset by peer"))
            return
        # 4. SYN in a synchronized state: challenge ACK (RFC 5961 §4)
        if flags & SYN:
            self._send_ack()
            return
        # 5. ACK
        if not flags & ACK:
            return
        if self.state == SYN_RECEIVED:
            ack = self._unwrap_ack(seg.ack)
            if not self.snd_una < ack <= self.snd_max:
                self.outgoing.append(build_reset(self.local[0], self.remote[0], seg))
                return
            if self.listener is not None and not self.listener.can_accept():
                return  # accept queue full: act as if the ACK was lost; the peer will retransmit
            self.state = ESTABLISHED
            self.snd_wnd = seg.window << self.snd_wscale
            self.snd_wl1, self.snd_wl2 = seq, ack
            self.events |= ESTABLISHED_PASSIVE | WAKE
        if not self._process_ack(seg, now):
            return
        # 7. segment text
        if payload or flags & FIN:
            if seq < self.rcv_nxt:  # trim what we already have
                cut = self.rcv_nxt - seq
                payload = payload[cut:]
                seq = self.rcv_nxt
            limit = self.rcv_adv + (1 << self.rcv_wscale)
            if seq + len(payload) > limit:
                payload = payload[:max(limit - seq, 0)]
                flags &= ~FIN
            if payload and self.state in _CAN_RECEIVE:  # (text after the peer's FIN is ignored)
                if self.orphaned:
                    self.abort()  # nobody will ever read it: tell the peer, as Linux does
                    return
                self._receive_text(seq, payload, now)
            if flags & FIN:
                self._receive_fin(seq + len(payload), now)

    def _on_segment_time_wait(self, seg: Segment, seq: int, now: float) -> None:
        """Only a retransmitted FIN is expected; an exact RST ends TIME_WAIT early (RFC 9293)."""
        if seg.flags & RST:
            if seq == self.rcv_nxt:
                self.terminate(None)
        elif seg.flags & FIN or seg.payload:
            self._send_ack()
            if seg.flags & FIN:
                self.timer_idle = now + 2 * self.config.msl

    def _on_segment_syn_sent(self, seg: Segment, now: float) -> None:
        flags = seg.flags
        if flags & ACK:
            ack = self._unwrap_ack(seg.ack)
            if not self.iss < ack <= self.snd_max:
                if not flags & RST:
                    self.outgoing.append(build_reset(self.local[0], self.remote[0], seg))
                return
            if flags & RST:
                self.terminate(os_error(errno.ECONNREFUSED, "connection refused"))
                return
        elif flags & RST:
            return
        if not flags & SYN:
            return
        self._take_syn_options(seg)
        if flags & ACK:
            self.state = ESTABLISHED
            self._ack_advanced(self._unwrap_ack(seg.ack), now)
            self.ack_now = True
            self.events |= WAKE
        else:  # simultaneous open
            self.state = SYN_RECEIVED
            self._send_syn(now)

    def _unwrap_ack(self, ack: int) -> int:
        return self.snd_una + ((ack - self.snd_una + HALF) & MASK) - HALF

    def _process_ack(self, seg: Segment, now: float) -> bool:
        """ACK field processing for synchronized states; False if the segment must be dropped."""
        ack = self._unwrap_ack(seg.ack)
        if ack > self.snd_max:
            self._send_ack()  # acks something we never sent
            return False
        if ack < self.snd_una - max(self.max_snd_wnd, 0xFFFF):
            return False  # too old to be anything but a blind injection (RFC 5961 §5)
        seq = self.rcv_nxt + ((seg.seq - self.rcv_nxt + HALF) & MASK) - HALF
        window = seg.window << self.snd_wscale
        if seg.sack_blocks and self.sack_ok:
            self.scoreboard.add(seg.sack_blocks, self.snd_una, self.snd_max)
        if ack > self.snd_una:
            self._ack_advanced(ack, now)
        elif (ack == self.snd_una and self.snd_max > self.snd_una and not seg.payload
              and not seg.flags & (SYN | FIN) and window == self.snd_wnd):
            self._duplicate_ack(now)
        if self.snd_wl1 < seq or (self.snd_wl1 == seq and self.snd_wl2 <= ack):
            self.snd_wnd = window
            self.snd_wl1, self.snd_wl2 = seq, ack
            if window > self.max_snd_wnd:
                self.max_snd_wnd = window
            if window and self.timer_kind == _PERSIST and self.timer_rto is not None:
                self.timer_rto = None
                self.rtt.backoff = 0
        if self.scoreboard.ranges:
            self._detect_losses(now)
        state = self.state
        fin_acked = self.fin_queued and self.snd_una > self.snd_buf.start  # buffer empty and FIN covered
        if state == FIN_WAIT_1 and fin_acked:
            self.state = FIN_WAIT_2
            if self.orphaned:
                self.timer_idle = now + 2 * self.config.msl  # don't wait forever for a FIN nobody reads
        elif state == CLOSING and fin_acked:
            self._enter_time_wait(now)
        elif state == LAST_ACK and fin_acked:
            self.terminate(None)
            return False
        return True

    def _detect_losses(self, now: float) -> None:
        """Decide from the SACK scoreboard whether the first hole (or a resent one) was lost."""
        if self.in_recovery:
            self._resend_lost_retransmissions()
        elif self.snd_una >= self.recover:
            if self.scoreboard.sacked_bytes() >= min(3 * self.snd_mss, self.snd_max - self.snd_una - self.snd_mss):
                # RFC 6675 IsLost(snd_una): three segments SACKed above the first hole, or, in a flight
                # too small to produce that many, everything but the first (early retransmit, RFC 5827).
                self._enter_recovery(now)
            elif self.timer_kind != _REORDER and self.rtt.srtt is not None:
                # RACK (RFC 8985 §6.2): later data arrived, so the hole is lost unless it shows up
                # within a reordering window of a quarter RTT.
                self.timer_kind = _REORDER
                self.timer_rto = now + max(self.rtt.srtt / 4, 0.001)

    def _ack_advanced(self, ack: int, now: float) -> None:
        acked = ack - self.snd_una
        if self.snd_buf.acknowledge(ack):
            queued = len(self.snd_buf)
            if 2 * (self.config.send_buffer - queued) >= queued:
                # Writers wake once a third of the buffer is free (Linux's sk_stream_write_space), not for
                # every ACK: a waiting send_all then queues a large piece per wake-up, not an ACK's worth.
                self.events |= WAKE
        self.snd_una = ack
        if self.snd_nxt < ack:
            self.snd_nxt = ack
        if self.rtt_seq is not None and ack > self.rtt_seq:
            self.rtt.sample(now - self.rtt_time)
            self.rtt_seq = None
        self.retries = 0
        self.rtt.backoff = 0
        self.probe_sent = False
        if self.scoreboard.ranges:
            self.scoreboard.acked(ack)
        mss = self.snd_mss
        if self.in_recovery:
            if ack >= self.recover:  # full ACK: leave recovery (RFC 6582 §3.2 step 3)
                self.in_recovery = False
                self.rexmits = []
                self.congestion.leave_recovery(self.snd_max - ack, mss)
                self.dupacks = 0
            elif not self.sack_ok:  # NewReno partial ACK: repair the next hole now (RFC 6582 §3.2 step 4)
                self.congestion.partial_ack(acked, mss)
                self._retransmit_hole(now)
        else:
            self.dupacks = 0
            self.congestion.grow(acked, mss)
        self._arm_retransmit(now)

    def _duplicate_ack(self, now: float) -> None:
        self.dupacks += 1
        if self.in_recovery:
            if not self.sack_ok and not self._retransmit_hole(now):
                self.congestion.inflate(self.snd_mss)
        elif self.dupacks == 3 and self.snd_una >= self.recover:  # RFC 6582 §3.2 step 1
            self._enter_recovery(now)

    def _enter_recovery(self, now: float) -> None:
        """Fast retransmit: halve the window and resend the first hole at once.

        With SACK the rest of recovery is RFC 6675's: holes and then new data go out while the estimated
        data in flight (the scoreboard's `pipe`) is below cwnd. Without SACK it is NewReno's window inflation.
        """
        self.congestion.enter_recovery(self.snd_max - self.snd_una, self.snd_mss, self.sack_ok)
        self.recover = self.snd_max
        self.in_recovery = True
        self.rexmit_next = self.snd_una
        self.rexmits = []
        self._retransmit_hole(now)
        self._arm_retransmit(now)

    def _resend_lost_retransmissions(self) -> None:
        """A resent hole is lost again once data sent after it shows up SACKed (RACK's insight, RFC 8985)."""
        highest = self.scoreboard.ranges[-1][1]
        kept = []
        for entry in self.rexmits:
            start, end, sent_before = entry
            start = max(start, self.snd_una)
            if start >= end or self.scoreboard.covers(start, end):
                continue  # it arrived
            if highest - sent_before >= self.snd_mss:
                self._send_range(start, end - start)
                entry[0], entry[2] = start, self.snd_max
            kept.append(entry)
        self.rexmits = kept

    def _retransmit_hole(self, now: float) -> bool:
        """Resend the first never-retransmitted hole below the highest SACKed byte (or at snd_una)."""
        hole = self.scoreboard.next_hole(max(self.snd_una, self.rexmit_next), self.snd_una, self.snd_max,
                                         self.snd_mss)
        if hole is None:
            return False
        start, end = hole
        self._send_range(start, end - start)
        self.rexmit_next = end
        if len(self.rexmits) < MAX_RANGES:
            self.rexmits.append([start, end, self.snd_max])
        if self.rtt_seq is not None and self.rtt_seq >= start:
            self.rtt_seq = None  # Karn: no sample from retransmitted data
        return True

    def _receive_text(self, seq: int, payload: memoryview, now: float) -> None:
        if seq == self.rcv_nxt:
            self.rcv_buf += payload
            self.rcv_nxt += len(payload)
            if self.ooo.runs:
                self._drain_out_of_order()
                self.ack_now = True  # a hole got filled: tell the sender at once (RFC 5681 §4.2)
            self.unacked += len(payload)
            if self.unacked >= 2 * self.rcv_mss:
                self.ack_now = True
            elif self.timer_ack is None:
                self.timer_ack = now + self.config.delayed_ack
            self.events |= WAKE
        else:
            self.ooo.add(seq, payload)
            self._send_ack()  # an immediate duplicate ACK with SACK feeds the sender's fast retransmit

    def _drain_out_of_order(self) -> None:
        self.rcv_nxt = self.ooo.drain_into(self.rcv_buf, self.rcv_nxt)
        if self.fin_at is not None and self.fin_at == self.rcv_nxt and not self.eof_received:
            self._receive_fin(self.rcv_nxt, self.last_heard)

    def _receive_fin(self, fin_seq: int, now: float) -> None:
        if self.eof_received:
            return
        if fin_seq != self.rcv_nxt:
            self.fin_at = fin_seq  # out of order: applied when the gap fills
            self._send_ack()
            return
        self.rcv_nxt += 1
        self.eof_received = True
        self.fin_at = fin_seq
        self.ack_now = True
        self.events |= WAKE
        state = self.state
        if state in (SYN_RECEIVED, ESTABLISHED):
            self.state = CLOSE_WAIT
        elif state == FIN_WAIT_1:
            if self.snd_una > self.snd_buf.start:
                self._enter_time_wait(now)
            else:
                self.state = CLOSING
        elif state == FIN_WAIT_2:
            self._enter_time_wait(now)

    def _enter_time_wait(self, now: float) -> None:
        self.state = TIME_WAIT
        self.timer_rto = self.timer_ack = None
        self.timer_idle = now + 2 * self.config.msl
        self.snd_buf.clear()
        self.rcv_buf = ReceiveBuffer() if self.orphaned else self.rcv_buf
        self.ooo.clear()
        self.scoreboard.clear()
        self.events |= ENTERED_TIME_WAIT | WAKE
        self._update_deadline()

    def terminate(self, error: OSError | None) -> None:
        """Move to CLOSED (raising TERMINATED: the stack drops the connection from its tables)."""
        if self.state == CLOSED:
            return
        self.state = CLOSED
        if error is not None and self.error is None:
            self.error = error
        self.timer_rto = self.timer_ack = self.timer_idle = None
        self.deadline = None
        self.snd_buf.clear()
        self.ooo.clear()
        self.scoreboard.clear()
        self.events |= TERMINATED | WAKE

    # ------------------------------------------------------------------ output
    def flush(self, now: float) -> None:
        """Send what the windows allow, and an ACK if one is owed and no data segment carried it."""
        state = self.state
        if state in (ESTABLISHED, CLOSE_WAIT, FIN_WAIT_1, CLOSING, LAST_ACK):
            self._send_data(now)
        if self.ack_now or self.unacked >= 2 * self.rcv_mss:
            if state not in (CLOSED, SYN_SENT):
                self._send_ack()
        self._update_deadline()

    def _send_data(self, now: float) -> None:
        mss = self.snd_mss
        snd_buf = self.snd_buf
        buf_start, data_end = snd_buf.start, snd_buf.end
        if self.in_recovery and self.sack_ok:
            budget = self.congestion.cwnd - self.scoreboard.pipe(self.snd_una, self.snd_max, self.rexmits)
            while budget > 0 and self._retransmit_hole(now):
                budget -= mss
            window_end = min(self.snd_una + self.snd_wnd, self.snd_max + budget)
        else:
            cwnd = self.congestion.cwnd
            if 0 < self.dupacks < 3 and not self.in_recovery:
                cwnd += self.dupacks * mss  # limited transmit (RFC 3042): new data keeps the ACK clock going
            window_end = self.snd_una + min(self.snd_wnd, cwnd)
        sent_any = False
        window = None  # the window field, the same in every segment of this flush
        view = snd_buf.view()
        try:
            while True:
                nxt = self.snd_nxt
                limit = mss
                if nxt < self.snd_max and self.scoreboard.ranges:  # resending after a timeout: skip what arrived
                    nxt, limit = self.scoreboard.skip(nxt, mss)
                    self.snd_nxt = nxt
                available = data_end - nxt
                room = window_end - nxt
                if available > 0 and room > 0:
                    size = min(available, limit, room)
                    if size < mss and size < available:
                        # Sender SWS avoidance (RFC 9293 §3.8.6.2.1): wait for a fuller window unless it
                        # is at least half the largest the peer offered, or nothing is in flight.
                        if not (size >= self.max_snd_wnd // 2 or nxt == self.snd_una):
                            break
                    if size < mss and not self.nodelay and nxt > self.snd_una and self._small_in_flight():
                        break  # Nagle/Minshall: one small segment in flight at a time
                    offset = nxt - buf_start
                    last = nxt + size == data_end
                    fin = self.fin_queued and last
                    if window is None:
                        window = self._advertise()
                    self._emit(nxt, ACK | (PSH if last else 0) | (FIN if fin else 0),
                               view[offset:offset + size], b"", window)
                    self.snd_nxt = nxt + size + (1 if fin else 0)
                    if self.snd_nxt > self.snd_max:
                        if self.rtt_seq is None:
                            self.rtt_seq, self.rtt_time = nxt, now
                        self.snd_max = self.snd_nxt
                        if fin:
                            self._fin_sent()
                    sent_any = True
                elif self.fin_queued and nxt == data_end:  # all data out, FIN not (or no longer) sent
                    self._emit(nxt, ACK | FIN)
                    self.snd_nxt = nxt + 1
                    if self.snd_nxt > self.snd_max:
                        self.snd_max = self.snd_nxt
                        self._fin_sent()
                    sent_any = True
                else:
                    break
        finally:
            view.release()
        if sent_any:
            if self.timer_rto is None or self.timer_kind != _RETRANSMIT:
                self._arm_retransmit(now)
            else:  # new data (re)starts the loss probe timer (RFC 8985 §7.2)
                probe = self._probe_timeout()
                if probe is not None and now + probe < self.timer_rto:
                    self.timer_kind = _PROBE
                    self.timer_rto = now + probe
        elif (self.snd_wnd == 0 and data_end > self.snd_nxt and self.snd_una == self.snd_max
              and self.timer_rto is None):
            self.timer_kind = _PERSIST  # zero window with data waiting: probe it
            self.timer_rto = now + self.rtt.timeout()

    def _small_in_flight(self) -> bool:
        """Minshall's rule: is the last segment sent (below snd_max) still unacknowledged and small?"""
        return (self.snd_max - self.snd_una) % self.snd_mss != 0

    def _fin_sent(self) -> None:
        if self.state == ESTABLISHED:
            self.state = FIN_WAIT_1
        elif self.state == CLOSE_WAIT:
            self.state = LAST_ACK

    def _send_range(self, start: int, size: int) -> None:
        """Retransmit [start, start+size) of what was sent before (data and/or FIN)."""
        data_end = self.snd_buf.end
        offset = start - self.snd_buf.start
        payload_size = max(min(size, data_end - start), 0)
        fin = self.fin_queued and start + payload_size == data_end and self.snd_max > data_end
        with self.snd_buf.view() as view:
            self._emit(start, ACK | (FIN if fin else 0) | (PSH if payload_size else 0),
                       view[offset:offset + payload_size])

    def _send_ack(self) -> None:
        if self.state in (CLOSED, SYN_SENT):
            return
        self._emit(self.snd_nxt, ACK, b"", self.ooo.sack_option() if self.ooo.runs and self.sack_ok else b"")

    def _advertise(self) -> int:
        """The window field: the right edge moves only by useful amounts (receiver SWS avoidance)."""
        free = self.rcv_cap - len(self.rcv_buf)
        edge = self.rcv_nxt + max(free, 0)
        if edge - self.rcv_adv >= min(self.rcv_cap >> 1, self.rcv_mss):
            self.rcv_adv = edge
        window = max(self.rcv_adv - self.rcv_nxt, 0)
        return min((window + (1 << self.rcv_wscale) - 1) >> self.rcv_wscale, 0xFFFF)

    def _emit(self, seq: int, flags: int, payload: bytes | memoryview = b"", options: bytes = b"",
              window: int | None = None) -> None:
        """Queue one segment; `window`: the field as `_advertise` just gave it (a flush's data segments all
        carry the same one, worked out once)."""
        if flags & ACK:
            ack = self.rcv_nxt & MASK
            self.ack_now = False
            self.unacked = 0
            self.timer_ack = None
        else:
            ack = 0
        if flags & SYN:
            window = min(self.rcv_cap, 0xFFFF)
        elif window is None:
            window = self._advertise()
        seq &= MASK
        header_len = HEADER_LEN + len(options)
        tcp_len = header_len + len(payload)
        total = ipv4.HEADER_LEN + tcp_len
        offflags = header_len << 10 | flags
        src, sport = self.local
        dst, dport = self.remote
        check = finish(pseudo_header(src, dst, ipv4.PROTO_TCP, tcp_len) + sport + dport + seq + ack + offflags
                       + window + (partial(options) if options else 0) + (partial(payload) if payload else 0)
                       ) if self.checksums else 0
        header = _HEADERS.pack(0x4500, total, 0, 0x4000, ipv4.DEFAULT_TTL << 8 | ipv4.PROTO_TCP,
                               FOLD - (self.ip_words + total) % FOLD,
                               src, dst, sport, dport, seq, ack, offflags, window, check, 0)
        self.outgoing.append(b"".join((header, options, payload)))

    # ------------------------------------------------------------------ timers
    def _arm_retransmit(self, now: float) -> None:
        """Start the retransmission timer, preceded by a tail loss probe (RFC 8985 §7) when one may go.

        The probe makes a lost tail of a flight (which produces no duplicate ACKs) show up as a SACK
        hole after about two round trips instead of a whole RTO.
        """
        if self.snd_una >= self.snd_max:
            self.timer_rto = None
            return
        rto = self.rtt.timeout()
        probe = self._probe_timeout()
        if probe is not None and probe < rto:
            self.timer_kind = _PROBE
            self.timer_rto = now + probe
        else:
            self.timer_kind = _RETRANSMIT
            self.timer_rto = now + rto

    def _probe_timeout(self) -> float | None:
        """RFC 8985 §7.2's PTO, or None where no loss probe may be sent (no SACK, recovery, backoff)."""
        rtt = self.rtt
        if not self.sack_ok or rtt.srtt is None or self.in_recovery or self.probe_sent or rtt.backoff:
            return None
        timeout = 2 * rtt.srtt
        if self.snd_max - self.snd_una <= self.snd_mss:
            timeout += WORST_CASE_DELAYED_ACK
        return max(timeout, MIN_PROBE_TIMEOUT)

    def _update_deadline(self) -> None:
        deadline = self.timer_rto
        for timer in (self.timer_ack, self.timer_idle):
            if timer is not None and (deadline is None or timer < deadline):
                deadline = timer
        if self.config.keepalive_idle is not None and self.state in (ESTABLISHED, CLOSE_WAIT):
            keepalive = self.last_heard + self.config.keepalive_idle + self.probes * self.config.keepalive_interval
            if deadline is None or keepalive < deadline:
                deadline = keepalive
        self.deadline = deadline

    def on_timer(self, now: float) -> None:
        """Run every timer that is due, then flush."""
        if self.timer_ack is not None and self.timer_ack <= now:
            self.timer_ack = None
            self.ack_now = True
        if self.timer_rto is not None and self.timer_rto <= now:
            self.timer_rto = None
            if self.timer_kind == _PERSIST:
                self._probe_window(now)
            elif self.timer_kind == _PROBE:
                self._loss_probe(now)
            elif self.timer_kind == _REORDER:
                if self.scoreboard.ranges and not self.in_recovery:
                    self._enter_recovery(now)
                else:
                    self._arm_retransmit(now)
            else:
                self._retransmission_timeout(now)
        if self.timer_idle is not None and self.timer_idle <= now:
            self.timer_idle = None
            self.terminate(None if self.state == TIME_WAIT else os_error(errno.ETIMEDOUT, "FIN_WAIT_2 timeout"))
            return
        if (self.config.keepalive_idle is not None and self.state in (ESTABLISHED, CLOSE_WAIT)
                and now >= self.last_heard + self.config.keepalive_idle + self.probes * self.config.keepalive_interval):
            if self.probes >= self.config.keepalive_count:
                self.terminate(os_error(errno.ETIMEDOUT, "keepalive: peer stopped answering"))
                return
            self.probes += 1
            self._emit(self.snd_una - 1, ACK)  # RFC 1122 §4.2.3.6: an old sequence number elicits an ACK
        if self.state != CLOSED:
            self.flush(now)

    def _retransmission_timeout(self, now: float) -> None:
        """RFC 6298 §5.4-5.7 with RFC 5681 §3.1's loss window; give up after the configured retries."""
        limit = {SYN_SENT: self.config.syn_retries, SYN_RECEIVED: self.config.synack_retries}.get(
            self.state, self.config.data_retries)
        if self.retries >= limit:
            self.terminate(os_error(errno.ETIMEDOUT, "connection timed out"))
            return
        self.retries += 1
        self.rtt.backoff += 1
        self.rtt_seq = None
        if self.state in (SYN_SENT, SYN_RECEIVED):
            self._send_syn(now)
            return
        self.congestion.timeout(self.snd_max - self.snd_una, self.snd_mss, self.rtt.backoff == 1)
        self.in_recovery = False
        self.rexmits = []
        self.dupacks = 0
        self.recover = self.snd_max
        # Go back N from the first unacknowledged byte, skipping what the peer SACKed (RFC 6675 §5.1).
        self.snd_nxt = self.snd_una
        self.timer_kind = _RETRANSMIT
        self.timer_rto = now + self.rtt.timeout()

    def _loss_probe(self, now: float) -> None:
        """Resend the last segment sent; its ACK reveals (via SACK) any hole before it."""
        self.probe_sent = True
        data_end = min(self.snd_max, self.snd_buf.end)
        start = max(self.snd_una, data_end - self.snd_mss)
        self._send_range(start, self.snd_max - start)
        self._arm_retransmit(now)

    def _probe_window(self, now: float) -> None:
        """Zero-window probe: an already-acknowledged sequence number makes the receiver report its window."""
        self.rtt.backoff += 1
        self._emit(self.snd_una - 1, ACK)
        self.timer_kind = _PERSIST
        self.timer_rto = now + self.rtt.timeout()


def ipv4_str(address: int) -> str:
    return ".".join(str(b) for b in address.to_bytes(4, "big"))

