"""Runs a sans-IO `Device` on a real UDP socket under Trio.

The receive loop reads ahead with non-blocking receives, until EAGAIN or a read-ahead limit, from the
interface's socket and (on Linux) each peer's own (`peersockets.py`), a few datagrams of each per round,
into a `FairQueue` keyed by sender, feeds the device a batch taken round-robin from it (so one peer's
flood cannot push another peer's datagram to the end of a long backlog), hands the decrypted packets to
the attached network stack in one call, flushes the device's datagrams, and only then awaits
readability: one await per batch, not per packet. Timers are a single cancel scope whose deadline
tracks `device.next_deadline()`. An unexpected exception while handling one datagram, a timer or the
stack's receive callback is contained (`faults.Contained`): that datagram or batch is dropped, the
interface goes on.

A peer that keeps its socket full while other peers are heard from (a flood, or a bulk transfer) is muted:
its socket leaves the set the receive loop awaits, and a second task serves it only in the thread's idle
moments (when every other task is blocked and no I/O is ready), or after BULK_MAX_WAIT at the latest. So a
flood takes what the other tenants leave, instead of a turn between each of their steps; it gets its
socket back once it has read it empty, or once no one else has been heard from for CONTENTION_WINDOW.

On Linux, UDP generic segmentation offload cuts the per-datagram syscall cost: runs of equal-sized
datagrams to one endpoint leave in a single `sendmsg` (UDP_SEGMENT), and the kernel hands back
coalesced runs in a single receive (UDP_GRO). Elsewhere (Windows' Python has no `recvmsg`/`sendmsg`),
if the kernel refuses, or with KAKUREMICHI_UDP_OFFLOAD=off, plain sendto/recvfrom are used.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import socket
import struct
import sys
import time
from collections import deque
from typing import Callable

import trio
from trio.testing import wait_all_tasks_blocked  # the scheduler's idle hook, for the muted peers' turns

from kakuremichi.faults import Contained
from kakuremichi.wg import peersockets
from kakuremichi.wg.device import Device
from kakuremichi.wg.fairqueue import QUANTUM, FairQueue
from kakuremichi.wg.peersockets import PeerSockets

log = logging.getLogger("kakuremichi.wg")

BATCH = 128  # datagrams handled per wake-up before yielding to other tasks
READ_AHEAD = 2 * BATCH  # datagrams read from the socket per wake-up at most, into the fair queue (more
# would lengthen every turn of the Trio loop that the interface shares with its stack and proxies)
TURN_BUDGET = 0.0003  # seconds of datagram handling per wake-up; a longer turn delays every other task
CONTENTION_WINDOW = 1.0  # seconds: a peer heard from this recently is one a flood must not slow down
BULK_MAX_WAIT = 0.002  # seconds a muted peer's datagrams wait for an idle moment at most (its share when busy)
OFFLOAD_SWITCH = "KAKUREMICHI_UDP_OFFLOAD"  # "off": plain sendto/recvfrom even where GSO/GRO would work
SOCKET_BUFFER = 4 << 20
MAX_BACKLOG = 4096  # datagrams waiting for the socket to become writable before we drop (like a NIC)

PacketReceiver = Callable[[list], None]


def udp_offload_possible(sock: socket.socket) -> bool:
    """Whether GSO/GRO may be tried: Linux, a Python socket with sendmsg/recvmsg_into and CMSG_SPACE
    (Windows' has none of them), and not switched off by the environment."""
    return (sys.platform == "linux" and os.environ.get(OFFLOAD_SWITCH, "on").lower() != "off"
            and all(hasattr(sock, name) for name in ("sendmsg", "recvmsg_into"))
            and hasattr(socket, "CMSG_SPACE"))


_SOL_UDP = getattr(socket, "SOL_UDP", 17)
_UDP_SEGMENT = 103  # linux/udp.h
_UDP_GRO = 104
_GSO_MAX_SEGMENTS = 64
_GSO_MAX_BYTES = 65000  # stay under the 65507-byte UDP payload limit
_GSO_SIZE = struct.Struct("=H")


class WireGuardInterface:
    """A WireGuard interface without a kernel: a Device, a UDP socket, and the IP-packet link above it.

    The link side follows the netstack contract: `mtu`, `send_packets(list)` (synchronous, never blocks,
    may drop under pressure) and `attach(receiver)` where `receiver(list_of_packets)` gets what arrives.
    """

    authenticated = True  # every packet handed up passed its peer's Poly1305 tag and AllowedIPs check

    def __init__(self, device: Device, *, listen_host: str = "0.0.0.0", listen_port: int = 0,
                 socket_per_peer: bool | None = None) -> None:
        """`socket_per_peer`: queue each peer's datagrams in a socket of its own (peersockets.py); by
        default where the OS can."""
        self.device = device
        if socket_per_peer is None:
            socket_per_peer = peersockets.possible()
        family = socket.AF_INET6 if ":" in listen_host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        if family == socket.AF_INET6:
            self.sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            try:
                self.sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER)
            except OSError:
                pass
        try:
            if socket_per_peer:
                peersockets.bind_shared(self.sock, (listen_host, listen_port))
            else:
                self.sock.bind((listen_host, listen_port))
        except OSError as exc:
            self.sock.close()
            raise OSError(exc.errno, f"cannot listen for WireGuard on UDP {listen_host}:{listen_port}: "
                                     f"{exc.strerror}") from exc  # the caller names its own flag or file key
        self.sock.setblocking(False)
        self._gso = udp_offload_possible(self.sock)
        self._gro = self._gso and self._enable_gro(self.sock)
        self.peer_sockets = PeerSockets(self.sock, configure=self._configure_peer_socket) \
            if socket_per_peer else None
        self._receiver: PacketReceiver | None = None
        self._backlog: deque = deque()
        self._writable = trio.Event()
        self._timer_scope: trio.CancelScope | None = None
        # With a socket per peer the kernel keeps each peer's backlog apart, and the fair queue needs only the
        # next turns' worth (a flood left in the kernel costs nothing, and its overflow is dropped there);
        # with one socket for all, it reads deep into that one FIFO to find the other senders' datagrams.
        self._queue = FairQueue(max_waiting=READ_AHEAD) if self.peer_sockets is not None else FairQueue()
        self._muted_queue = FairQueue(max_waiting=READ_AHEAD)  # the muted peers' datagrams
        self._muted_pending = trio.Event()
        self._heard: dict[socket.socket, float] = {}  # when each socket last had datagrams (unmuted ones)
        self.send_errors = 0
        self.contained = Contained(log, "wireguard receive")

    @staticmethod
    def _enable_gro(sock: socket.socket) -> bool:
        try:
            sock.setsockopt(_SOL_UDP, _UDP_GRO, 1)
        except OSError:
            return False
        return True

    def _configure_peer_socket(self, sock: socket.socket) -> None:
        if self._gro and not self._enable_gro(sock):
            raise OSError("UDP GRO refused on a peer socket")  # the peer then shares the main socket

    @property
    def mtu(self) -> int:
        return self.device.mtu

    @property
    def listen_port(self) -> int:
        return self.sock.getsockname()[1]

    def attach(self, receiver: PacketReceiver) -> None:
        self._receiver = receiver

    def send_packets(self, packets) -> None:
        device = self.device
        for packet in packets:
            device.send_packet(packet)
        self.flush()

    def flush(self) -> None:
        """Send what the device produced and move the timer wake-up earlier if needed.

        Call after changing the device directly (adding peers, sending a keepalive).
        """
        device = self.device
        if device.moved and self.peer_sockets is not None:  # before sending: an answer to what we send now must
            self.peer_sockets.update(device.peers_moved())  # not land in a socket about to close (a replaced peer's)
        if device.outgoing:
            self._send(device.datagrams_to_send())
        if device.incoming:
            packets = device.packets_received()
            if self._receiver is not None:  # with nothing attached, decrypted packets have nowhere to go
                try:
                    self._receiver(packets)
                except Exception as exc:  # the stack's bug: this batch is lost, the interface goes on
                    self.contained.record(exc, stage="stack", packets=len(packets))
        scope = self._timer_scope
        if scope is not None:
            deadline = device.next_deadline()
            if deadline is not None:
                when = trio.current_time() + (deadline - device.clock())
                if when < scope.deadline:
                    scope.deadline = when

    def _send(self, datagrams) -> None:
        backlog = self._backlog
        if backlog:
            backlog.extend(datagrams)
            self._trim_backlog()
            return
        sock = self.sock
        count = len(datagrams)
        i = 0
        while i < count:
            datagram, endpoint = datagrams[i]
            end = self._gso_run_end(datagrams, i) if self._gso else i + 1
            try:
                if end - i > 1:
                    sock.sendmsg([d for d, _ in datagrams[i:end]],
                                 [(_SOL_UDP, _UDP_SEGMENT, _GSO_SIZE.pack(len(datagram)))], 0, endpoint)
                else:
                    sock.sendto(datagram, endpoint)
            except BlockingIOError:
                backlog.extend(datagrams[i:])
                self._trim_backlog()
                self._writable.set()
                return
            except OSError as exc:
                if end - i > 1 and exc.errno in (errno.EIO, errno.EINVAL, errno.ENOPROTOOPT, errno.EOPNOTSUPP):
                    self._gso = False  # this kernel or route cannot segment: retry the run plainly
                    log.info("UDP segmentation offload unavailable, sending datagrams one by one")
                    continue
                # unreachable endpoint, bad address: the peer's problem, not ours
                self.send_errors += 1
                log.debug("udp send failed", extra={"fields": {"endpoint": endpoint, "error": exc.strerror}})
            i = end

    @staticmethod
    def _gso_run_end(datagrams, start: int) -> int:
        """End of the run from `start` that one UDP_SEGMENT send can carry: same endpoint, equal sizes
        (only the last may be shorter), within the kernel's segment and byte limits."""
        first, endpoint = datagrams[start]
        size = total = len(first)
        end = start + 1
        limit = min(len(datagrams), start + _GSO_MAX_SEGMENTS)
        while end < limit:
            datagram, to = datagrams[end]
            length = len(datagram)
            if to != endpoint or length > size or total + length > _GSO_MAX_BYTES:
                break
            total += length
            end += 1
            if length < size:
                break
        return end

    def _trim_backlog(self) -> None:
        while len(self._backlog) > MAX_BACKLOG:
            self._backlog.popleft()
            self.device.dropped["udp_backlog_full"] += 1

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled."""
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._receive_loop)
                nursery.start_soon(self._timer_loop)
                nursery.start_soon(self._backlog_loop)
                if self.peer_sockets is not None:
                    nursery.start_soon(self._muted_loop)
                task_status.started(self)
        finally:
            if self.peer_sockets is not None:
                self.peer_sockets.close()
            self.sock.close()

    async def _receive_loop(self) -> None:
        queue = self._queue
        sockets = self.peer_sockets
        awaited = sockets if sockets is not None else self.sock
        reader = self._reader(bytearray(65536), queue)
        mute = self._mute_floods if sockets is not None else None
        heard = self._heard
        while True:
            if sockets is not None:
                ready = sockets.ready()
                now = time.monotonic()
                for sock in ready:
                    heard[sock] = now
            else:
                ready = [self.sock]
            more = self._read_ahead(ready, reader, queue, mute=mute)
            self._handle_turn(queue)
            self.flush()
            if not more and not queue:
                await trio.lowlevel.wait_readable(awaited)
            else:
                await trio.lowlevel.checkpoint()

    def _read_ahead(self, ready: list[socket.socket], reader, queue: FairQueue, *, mute=None) -> list:
        """Read up to READ_AHEAD datagrams into `queue`, about QUANTUM of each ready socket per round, so a
        flood in one peer's socket takes no more of the turn's reading than any other peer's. Every ready
        socket is read in the first round even when the queue is full (a flood's backlog must not keep
        another peer's socket from being read at all); after it, `mute` may take the sockets that still hold
        more out of the turn. Returns the sockets that may hold more."""
        budget = READ_AHEAD
        first = True
        while ready and budget > 0:
            pending = []
            for i, sock in enumerate(ready):
                if not first and queue.full:
                    return pending + ready[i:]
                count, more = reader(sock, QUANTUM)
                budget -= count
                if more:
                    pending.append(sock)
            if first and pending and mute is not None:
                pending = mute(pending)
            ready, first = pending, False
        return ready

    def _others_heard(self, excluded: set) -> bool:
        """Whether a socket not in `excluded` had datagrams within CONTENTION_WINDOW (older entries are
        forgotten here)."""
        since = time.monotonic() - CONTENTION_WINDOW
        heard = self._heard
        for sock in [sock for sock, when in heard.items() if when < since]:
            del heard[sock]
        return any(sock not in excluded for sock in heard)

    def _mute_floods(self, full: list[socket.socket]) -> list[socket.socket]:
        """Mute the sockets still full after their quantum, if another peer is being heard from; returns
        those left to the receive loop."""
        sockets = self.peer_sockets
        if not self._others_heard(sockets.muted.union(full)):
            return full  # no one else to be fair to
        for sock in full:
            sockets.mute(sock)
        self._muted_pending.set()
        return []

    async def _muted_loop(self) -> None:
        """Serve the muted peers' sockets in idle moments; give each back once it is read empty and its
        datagrams handled, or all of them once the others have gone quiet."""
        sockets = self.peer_sockets
        queue = self._muted_queue
        reader = self._reader(bytearray(65536), queue)
        while True:
            await self._muted_pending.wait()
            self._muted_pending = trio.Event()
            while sockets.muted or queue:
                with trio.move_on_after(BULK_MAX_WAIT):
                    await wait_all_tasks_blocked()
                muted = list(sockets.muted)
                more = self._read_ahead(muted, reader, queue)
                self._handle_turn(queue)
                self.flush()
                if not queue:
                    contended = self._others_heard(sockets.muted)
                    for sock in muted:
                        if not contended or sock not in more:
                            sockets.unmute(sock)

    def _reader(self, buffer: bytearray, queue: FairQueue):
        """A function reading one socket into `queue` until at least `quota` datagrams were queued (a
        coalesced GRO run counts as its datagrams) or the socket is empty; it returns how many it queued and
        whether the socket may hold more."""
        dropped = self.device.dropped
        sender = self.device.sender
        view = memoryview(buffer)
        gro, buffers, ancillary_size = self._gro, [buffer], socket.CMSG_SPACE(4) if self._gro else 0

        def read(sock: socket.socket, quota: int) -> tuple[int, bool]:
            count = 0
            while count < quota:
                try:
                    if gro:
                        size, ancillary, _, source = sock.recvmsg_into(buffers, ancillary_size)
                    else:
                        size, source = sock.recvfrom_into(buffer)
                        ancillary = None
                except BlockingIOError:
                    return count, False
                except OSError:
                    count += 1  # ICMP port-unreachable surfaced on the socket: nothing to read
                    continue
                datagram = bytes(view[:size])
                if ancillary:  # a coalesced run of equal-sized datagrams from one source: queued as one
                    segment = int.from_bytes(ancillary[0][2], sys.byteorder) or size
                    run = memoryview(datagram)
                    items = [(run[offset:offset + segment], source) for offset in range(0, size, segment)]
                else:
                    items = [(datagram, source)]
                count += len(items)
                lost = queue.put(sender(items[0][0], source), items)
                if lost:
                    dropped["sender_queue_full"] += lost
            return count, True

        return read

    def _handle_turn(self, queue: FairQueue) -> None:
        """Feed the device up to BATCH datagrams of `queue`, QUANTUM at a time round-robin by sender, and only
        until the turn has spent TURN_BUDGET: the datagrams share this thread with the tasks serving the
        other tenants (their proxies, their TCP), and each of their steps waits for the turn to end. One
        that raises is dropped and counted."""
        receive = self.device.receive_datagram
        end = time.perf_counter() + TURN_BUDGET
        handled = 0
        while queue and handled < BATCH:
            datagrams = queue.take(min(queue.quantum, BATCH - handled))
            handled += len(datagrams)
            for datagram, source in datagrams:
                try:
                    receive(datagram, source)
                except Exception as exc:
                    self.contained.record(exc, stage="datagram", source=f"{source[0]}:{source[1]}",
                                          size=len(datagram))
            if time.perf_counter() >= end:
                break

    async def _timer_loop(self) -> None:
        device = self.device
        while True:
            deadline = device.next_deadline()
            when = math.inf if deadline is None else trio.current_time() + (deadline - device.clock())
            with trio.CancelScope(deadline=when) as self._timer_scope:
                await trio.sleep_forever()
            self._timer_scope = None
            try:
                device.tick()
            except Exception as exc:
                self.contained.record(exc, stage="timers")
            self.flush()

    async def _backlog_loop(self) -> None:
        backlog = self._backlog
        while True:
            await self._writable.wait()
            self._writable = trio.Event()
            while backlog:
                await trio.lowlevel.wait_writable(self.sock)
                while backlog:
                    datagram, endpoint = backlog[0]
                    try:
                        self.sock.sendto(datagram, endpoint)
                    except BlockingIOError:
                        break
                    except OSError:
                        self.send_errors += 1
                    backlog.popleft()


async def resolve_endpoint(host: str, port: int, family: int = socket.AF_INET) -> tuple[str, int]:
    """Resolve a peer endpoint once, up front: the hot path must never do DNS."""
    try:
        infos = await trio.socket.getaddrinfo(host, port, family, socket.SOCK_DGRAM)
    except socket.gaierror as exc:
        raise OSError(f"cannot resolve endpoint {host}:{port}: {exc.strerror}") from exc
    return infos[0][4][:2]


async def interface_from_config(config) -> WireGuardInterface:
    """A WireGuardInterface with the device, peers and listen port a wg-quick file describes."""
    device = Device(config.private_key, mtu=config.mtu)
    interface = WireGuardInterface(device, listen_port=config.listen_port or 0)
    for peer in config.peers:
        endpoint = await resolve_endpoint(*peer.endpoint) if peer.endpoint else None
        device.add_peer(peer.public_key, preshared_key=peer.preshared_key, endpoint=endpoint,
                        allowed_ips=[str(n) for n in peer.allowed_ips],
                        persistent_keepalive=peer.persistent_keepalive)
    return interface
