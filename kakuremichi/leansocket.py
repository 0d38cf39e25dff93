"""`LeanSocketStream`: a Trio socket stream whose every call is one scheduler step.

Trio's SocketStream runs each system call through a checkpoint before it and another after it, inside a
stack of context managers: a read that has to wait yields twice. A gateway reads and writes each client
once per request, so those steps are a share of its CPU you can measure (a ping-pong over a socketpair: 37
µs per round trip through Trio's streams, 25 through these). Here a call makes the bare non-blocking system
call, waits only when the kernel says EAGAIN, and yields once either way: by the wait, or by a shielded
checkpoint after a call that did not wait, so every call still is a checkpoint, as Trio requires.
"""

from __future__ import annotations

import errno
import socket
import struct

import trio

from kakuremichi.netstack.streams import OneAtATime, receive_size

_CLOSED_ERRNOS = {errno.EBADF, errno.ENOTSOCK}  # what a call on a closed descriptor fails with


def _stream_error(exc: OSError) -> trio.BrokenResourceError | trio.ClosedResourceError:
    """The stream error Trio's own streams raise for `exc`."""
    if exc.errno in _CLOSED_ERRNOS:
        return trio.ClosedResourceError("this socket was already closed")
    return trio.BrokenResourceError(f"socket connection broken: {exc}")


class LeanSocketStream(trio.abc.HalfCloseableStream):
    """`stream` (a connected trio.SocketStream, which keeps the descriptor) with lean reads and writes;
    `socket` is its Trio socket, for options and addresses."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self._stream = stream
        self.socket = tsock = stream.socket
        # A second socket object on the same descriptor, for bare non-blocking calls (the bridge's too);
        # detached, never closed, at aclose: `stream` owns the descriptor.
        self.bare = socket.socket(tsock.family, tsock.type, tsock.proto, tsock.fileno())
        self.bare.setblocking(False)
        self._sending = OneAtATime("sending")
        self._receiving = OneAtATime("receiving")
        self._closed = False

    def setsockopt(self, level: int, option: int, value: int | bytes) -> None:
        self.socket.setsockopt(level, option, value)

    def getsockopt(self, level: int, option: int, buffersize: int = 0) -> int | bytes:
        return self.socket.getsockopt(level, option, buffersize)

    def reset_on_close(self) -> None:
        """Make the close a TCP reset (SO_LINGER 0), so the peer knows the exchange failed."""
        try:
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass  # already gone

    async def _attempt(self, call, wait, argument):
        """`call(argument)` on the bare socket, waiting by `wait` while it would block; returns its result
        and whether it waited."""
        waited = False
        while True:
            if self._closed:
                raise trio.ClosedResourceError("this socket was already closed")
            try:
                return call(argument), waited
            except (BlockingIOError, InterruptedError):
                await wait(self.bare)
                waited = True
            except OSError as exc:
                raise _stream_error(exc) from exc

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        max_bytes = receive_size(max_bytes)
        with self._receiving:
            await trio.lowlevel.checkpoint_if_cancelled()
            data, waited = await self._attempt(self.bare.recv, trio.lowlevel.wait_readable, max_bytes)
            if not waited:
                await trio.lowlevel.cancel_shielded_checkpoint()
            return data

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        with self._sending:
            await trio.lowlevel.checkpoint_if_cancelled()
            if self._closed:
                raise trio.ClosedResourceError("this socket was already closed")
            if self.socket.did_shutdown_SHUT_WR:
                raise trio.ClosedResourceError("can't send data after sending EOF")
            waited = False
            with memoryview(data) as view:
                sent, total = 0, len(view)
                while sent < total:
                    count, waited_now = await self._attempt(self.bare.send, trio.lowlevel.wait_writable,
                                                            view[sent:])
                    sent += count
                    waited = waited or waited_now
            if not waited:
                await trio.lowlevel.cancel_shielded_checkpoint()

    async def wait_send_all_might_not_block(self) -> None:
        with self._sending:
            if self._closed:
                raise trio.ClosedResourceError("this socket was already closed")
            await trio.lowlevel.wait_writable(self.bare)

    async def send_eof(self) -> None:
        with self._sending:
            await self._stream.send_eof()

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            trio.lowlevel.notify_closing(self.bare)  # a task waiting on the descriptor gets ClosedResourceError
            self.bare.detach()
        await self._stream.aclose()


class LeanSocketListener(trio.abc.Listener[LeanSocketStream]):
    """A trio.SocketListener whose connections are LeanSocketStreams; `socket` is the listening socket."""

    def __init__(self, listener: trio.SocketListener) -> None:
        self._listener = listener
        self.socket = listener.socket

    async def accept(self) -> LeanSocketStream:
        return LeanSocketStream(await self._listener.accept())

    async def aclose(self) -> None:
        await self._listener.aclose()
