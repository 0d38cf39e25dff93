"""`bridge`: a userspace TCP connection joined with an OS socket, with no task hop per chunk.

A splice of two streams copies each direction in a task of its own, so every chunk costs a wake-up and a
checkpoint on each side: four scheduler steps for each request an agent forwards. Here the data the
stack receives goes into the socket from the stack's own delivery, synchronously, for as long as the
socket takes it all; the socket's direction is one task that waits only when the socket has nothing to
read or the connection's send buffer is full. A task is woken only for what needs waiting: a full
socket, the peer's FIN, a failure. With `reset_follows`, a connection that fails (reset, or its peer gone)
resets the socket too, so the client of a tcp tunnel learns the exchange failed.
"""

from __future__ import annotations

import socket

import trio

from kakuremichi.leansocket import LeanSocketStream
from kakuremichi.netstack.streams import TcpStream, failure
from kakuremichi.netstack.tcp import State

RUN = 16  # chunks a direction moves without waiting before it lets the other tasks run


class _Bridge:
    """One connection ⇄ socket pair; `to_socket`/`to_connection` count the bytes moved, `connection_failed`
    tells whether it ended by the connection's failure."""

    def __init__(self, stream: TcpStream, sock: socket.socket, chunk: int) -> None:
        self.stream = stream
        self.connection = stream.connection
        self.sock = sock
        self.chunk = chunk
        self.pending: memoryview | None = None  # taken from the connection, not yet taken by the socket
        self.pumping = False
        self.failure: OSError | None = None
        self.needed = trio.lowlevel.ParkingLot()  # the outbound task, until the fast path cannot go on alone
        self.to_socket = 0
        self.to_connection = 0
        self.connection_failed = False

    def _connection_failure(self) -> OSError:
        self.connection_failed = True
        return failure(self.connection)

    def on_change(self) -> None:
        """Called by the stack's delivery whenever the connection changed."""
        if self.pump():
            self.needed.unpark_all()

    def pump(self) -> bool:
        """Move what the connection received into the socket while it takes all of it; True when the
        outbound task has work: a full socket, the peer's FIN or a failure."""
        connection = self.connection
        if not self.pumping:  # a flush inside the loop may call back: the loop below picks up its data
            self.pumping = True
            try:
                while self.pending is None and self.failure is None:
                    data = connection.receive(self.chunk)
                    if not data:
                        break
                    self.stream.kick()  # the window update, if reading opened it
                    self.pending = memoryview(data)
                    self.send_pending()
            finally:
                self.pumping = False
        return (self.pending is not None or self.failure is not None or connection.eof_received
                or connection.error is not None or connection.state == State.CLOSED)

    def send_pending(self) -> None:
        pending = self.pending
        try:
            sent = self.sock.send(pending)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self.failure = exc
            return
        self.to_socket += sent
        self.pending = None if sent == len(pending) else pending[sent:]

    async def outbound(self) -> None:
        """Connection → socket, where the fast path stops: a full socket, then the FIN or the failure."""
        connection = self.connection
        while True:
            if self.failure is not None:
                raise self.failure
            if self.pending is not None:
                await trio.lowlevel.wait_writable(self.sock)
                self.send_pending()
                continue
            if not self.pump():
                await self.needed.park()
                continue
            if self.pending is not None or self.failure is not None:
                continue
            if connection.eof_received:
                self.sock.shutdown(socket.SHUT_WR)
                return
            raise self._connection_failure()

    async def inbound(self) -> None:
        """Socket → connection: reads while the socket has data, waits when it has none. A read shorter
        than the chunk emptied the socket, so the next one waits first: an answer to a request is such a
        read, and the read after it would only fail with EAGAIN (a system call and an exception)."""
        connection, sock, chunk = self.connection, self.sock, self.chunk
        full = connection.user.write
        run = 0
        drained = False
        while True:
            if drained:
                await trio.lowlevel.wait_readable(sock)
                run = 0
            try:
                data = sock.recv(chunk)
            except (BlockingIOError, InterruptedError):
                drained = True
                continue
            drained = len(data) < chunk
            if not data:
                connection.shutdown()
                self.stream.kick()
                return
            view = memoryview(data)
            while view:
                if connection.error is not None or connection.state == State.CLOSED:
                    raise self._connection_failure()
                try:
                    taken = connection.send(view)
                except OSError:  # it cannot send any more
                    self.connection_failed = True
                    raise
                if taken:
                    self.to_connection += taken
                    view = view[taken:]
                    self.stream.kick()
                else:
                    await full.park()
                    run = 0
            run += 1
            if run >= RUN:
                run = 0
                await trio.lowlevel.checkpoint()


async def bridge(stream: TcpStream, other: LeanSocketStream, chunk: int, *,
                 reset_follows: bool = False) -> tuple[int, int, bool]:
    """Copy stream→other and other→stream until both directions finish, then close both (as
    `pipe.splice` does); returns (bytes stream→other, bytes other→stream, whether the connection failed).
    The calls on `other` go through its bare socket: Trio's would checkpoint on every one of them."""
    joined = _Bridge(stream, other.bare, chunk)
    waiters = stream.connection.user
    waiters.on_change = joined.on_change
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(joined.outbound)
            nursery.start_soon(joined.inbound)
    except* OSError:
        pass  # one side reset or vanished: both get closed below
    finally:
        waiters.on_change = None
        if reset_follows and joined.connection_failed:
            other.reset_on_close()
        with trio.CancelScope(shield=True):
            await trio.aclose_forcefully(stream)
            await trio.aclose_forcefully(other)
    return joined.to_socket, joined.to_connection, joined.connection_failed
