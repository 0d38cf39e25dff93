"""Trio faces of the sans-IO stack: TCP streams and listeners, UDP sockets.

Each object wraps one core object (Connection, Listener, udp.Endpoint) and parks on a ParkingLot that the
NetStack unparks when the core reports a change. Nothing here touches packets: calls only move bytes in
and out of the core's bounded buffers and ask the NetStack to flush, so a slow reader shrinks the TCP
window and a slow peer makes `send_all` wait.
"""

from __future__ import annotations

import errno
import operator
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

import trio

from kakuremichi.netstack.tcp import Connection, State, ipv4_str

if TYPE_CHECKING:
    from kakuremichi.netstack.stack import Listener, Stack
    from kakuremichi.netstack.udp import Endpoint

DEFAULT_RECEIVE_SIZE = 65536


class Driver(Protocol):
    """What the streams need from the driver that made them (trio_stack.NetStack)."""

    core: Stack

    def kick(self, connection: Connection | None = None) -> None: ...

    def close_listener(self, listener: Listener) -> None: ...

    def udp_send(self, endpoint: Endpoint, data, address: tuple[str, int]) -> None: ...


class Waiters:
    """The tasks waiting on one core object; the NetStack wakes them all when the core reports a change.
    `on_change`, if set, runs first: a bridge moves the data itself rather than wake a task for it."""

    __slots__ = ("read", "write", "on_change")

    def __init__(self) -> None:
        self.read = trio.lowlevel.ParkingLot()
        self.write = trio.lowlevel.ParkingLot()
        self.on_change: Callable[[], None] | None = None

    def wake(self) -> None:
        if self.on_change is not None:
            self.on_change()
        self.read.unpark_all()
        self.write.unpark_all()


def failure(connection: Connection) -> OSError:
    """Why `connection` can carry no more: its error, or ENOTCONN for one that closed without any."""
    return connection.error or OSError(errno.ENOTCONN, "connection closed")


class OneAtATime:
    """Trio's rule for a stream: one task at a time sends (or receives); another gets BusyResourceError."""

    __slots__ = ("busy", "_message")

    def __init__(self, doing: str) -> None:
        self.busy = False
        self._message = f"another task is {doing} on this stream"

    def __enter__(self) -> None:
        if self.busy:
            raise trio.BusyResourceError(self._message)
        self.busy = True

    def __exit__(self, *exc: object) -> None:
        self.busy = False


def receive_size(max_bytes: int | None) -> int:
    """`receive_some`'s argument, checked as Trio's streams check it (None: DEFAULT_RECEIVE_SIZE)."""
    max_bytes = DEFAULT_RECEIVE_SIZE if max_bytes is None else operator.index(max_bytes)
    if max_bytes < 1:
        raise ValueError("max_bytes must be >= 1")
    return max_bytes


class TcpStream(trio.abc.HalfCloseableStream):
    """A TCP connection of the userspace stack, usable wherever Trio expects a stream."""

    def __init__(self, netstack: Driver, connection: Connection) -> None:
        self._netstack = netstack
        self.connection = connection
        if connection.user is None:
            connection.user = Waiters()
        self._waiters: Waiters = connection.user
        self._closed = False
        self._eof_sent = False
        self._sending = OneAtATime("sending")
        self._receiving = OneAtATime("receiving")

    @property
    def local_address(self) -> tuple[str, int]:
        return ipv4_str(self.connection.local[0]), self.connection.local[1]

    @property
    def remote_address(self) -> tuple[str, int]:
        return ipv4_str(self.connection.remote[0]), self.connection.remote[1]

    @property
    def quiet_and_open(self) -> bool:
        """Neither data nor a close from the peer is waiting: a kept-alive connection fit for a new request,
        known at once (a pool checks it before reuse instead of watching every idle connection)."""
        connection = self.connection
        return (not self._closed and connection.state == State.ESTABLISHED and connection.error is None
                and not connection.rcv_buf and not connection.eof_received)

    @property
    def nodelay(self) -> bool:
        return self.connection.nodelay

    @nodelay.setter
    def nodelay(self, value: bool) -> None:
        """False turns on Nagle's algorithm (small writes coalesce while one is unacknowledged)."""
        self.connection.nodelay = value

    def set_keepalive(self, idle: float | None, interval: float = 75.0, count: int = 9) -> None:
        """Probe an idle peer after `idle` seconds and reset the connection after `count` silent probes."""
        self.connection.set_keepalive(idle, interval, count)
        self._netstack.kick(self.connection)

    def kick(self) -> None:
        """Have the stack flush what this connection's last call queued (data, a FIN, a window update)."""
        self._netstack.kick(self.connection)

    def _broken(self) -> trio.BrokenResourceError:
        return trio.BrokenResourceError(f"TCP connection broken: {failure(self.connection)}")

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        with self._sending:
            await trio.lowlevel.checkpoint()
            view = memoryview(data).cast("B")
            sent, total = 0, len(view)
            connection = self.connection
            while True:
                if self._closed or self._eof_sent:
                    raise trio.ClosedResourceError("stream was closed for sending")
                if connection.error is not None or connection.state == State.CLOSED:
                    raise self._broken() from connection.error
                if sent >= total:
                    return
                try:
                    count = connection.send(view[sent:])
                except OSError as exc:
                    raise self._broken() from exc
                if count:
                    sent += count
                    self._netstack.kick(connection)
                else:
                    await self._waiters.write.park()

    async def wait_send_all_might_not_block(self) -> None:
        with self._sending:
            await trio.lowlevel.checkpoint()
            connection = self.connection
            while True:
                if self._closed or self._eof_sent:
                    raise trio.ClosedResourceError("stream was closed for sending")
                if connection.send_space > 0 or connection.error is not None or connection.state == State.CLOSED:
                    return
                await self._waiters.write.park()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        max_bytes = receive_size(max_bytes)
        with self._receiving:
            # One checkpoint per call, as Trio's own streams: the park when nothing has arrived (a request's
            # answer, every time), else one after taking the data, shielded so a cancel cannot lose it.
            await trio.lowlevel.checkpoint_if_cancelled()
            connection = self.connection
            parked = False
            while True:
                if self._closed:
                    raise trio.ClosedResourceError("stream was closed")
                data = connection.receive(max_bytes)
                if data:
                    self._netstack.kick(connection)
                    break
                if connection.eof_received:
                    break
                if connection.error is not None or connection.state == State.CLOSED:
                    raise self._broken() from connection.error
                await self._waiters.read.park()
                parked = True
            if not parked:
                await trio.lowlevel.cancel_shielded_checkpoint()
            return data

    async def send_eof(self) -> None:
        with self._sending:
            await trio.lowlevel.checkpoint()
            if self._closed:
                raise trio.ClosedResourceError("stream was closed")
            self._eof_sent = True
            self.connection.shutdown()
            self._netstack.kick(self.connection)

    async def aclose(self) -> None:
        """Close both directions: FIN after queued data, or RST if received data was left unread."""
        if not self._closed:
            self._closed = True
            self.connection.close()
            self._netstack.kick(self.connection)
            self._waiters.wake()
        await trio.lowlevel.checkpoint()

    def abort(self) -> None:
        """Reset the connection at once (RST), discarding anything queued."""
        self._closed = True
        self.connection.abort()
        self._netstack.kick(self.connection)
        self._waiters.wake()


class TcpListener(trio.abc.Listener[TcpStream]):
    """Accepts connections that completed their handshake on a listening port."""

    def __init__(self, netstack: Driver, listener: Listener) -> None:
        self._netstack = netstack
        self.listener = listener
        listener.user = Waiters()

    @property
    def port(self) -> int:
        return self.listener.port

    async def accept(self) -> TcpStream:
        await trio.lowlevel.checkpoint()
        while True:
            if self.listener.closed:
                # a stopping stack closes it as the nursery around both is cancelled: that is a cancel
                await trio.lowlevel.checkpoint_if_cancelled()
                raise trio.ClosedResourceError("listener was closed")
            connection = self.listener.accept()
            if connection is not None:
                return TcpStream(self._netstack, connection)
            await self.listener.user.read.park()

    async def aclose(self) -> None:
        if not self.listener.closed:
            self._netstack.close_listener(self.listener)
        await trio.lowlevel.checkpoint()


class UdpSocket:
    """A bound UDP port: `sendto` never blocks (the link may drop, as a NIC would), `recvfrom` waits."""

    def __init__(self, netstack: Driver, endpoint: Endpoint) -> None:
        self._netstack = netstack
        self.endpoint = endpoint
        endpoint.user = Waiters()

    @property
    def local_address(self) -> tuple[str, int]:
        address = self.endpoint.address or self._netstack.core.addresses[0]
        return ipv4_str(address), self.endpoint.port

    async def sendto(self, data: bytes | bytearray | memoryview, address: tuple[str, int]) -> None:
        await trio.lowlevel.checkpoint()
        if self.endpoint.closed:
            raise trio.ClosedResourceError("UDP socket was closed")
        self._netstack.udp_send(self.endpoint, data, address)

    async def recvfrom(self) -> tuple[bytes, tuple[str, int]]:
        """The next datagram and its sender."""
        await trio.lowlevel.checkpoint()
        while True:
            if self.endpoint.closed:
                await trio.lowlevel.checkpoint_if_cancelled()  # as in TcpListener.accept
                raise trio.ClosedResourceError("UDP socket was closed")
            item = self.endpoint.pop()
            if item is not None:
                data, (source, port), _ = item
                return data, (ipv4_str(source), port)
            await self.endpoint.user.read.park()

    def close(self) -> None:
        self._netstack.core.udp_close(self.endpoint)
        self.endpoint.user.wake()

    async def aclose(self) -> None:
        self.close()
        await trio.lowlevel.checkpoint()

    def __enter__(self) -> UdpSocket:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
