"""An HTTP/1.1 connection (h1parse) bound to a Trio stream: the one place bytes meet HTTP events.

Both sides of the proxy use it — the client connection (server side) and each upstream connection to an
agent (client side). Bytes are fed to the parser one chunk at a time and only when it asks for more, so
memory stays bounded by the chunk size plus the header limit.

A wait gives up after the `timeout` it was called with: the connection is a `timeouts.Waits` noting
when, and a `timeouts.Guard` covering the connection is cancelled once the wait outlives it (the
guard's `expired` then names the connection). A read's deadline may be pushed back while it waits
(`restart_read`: the agent took more of the request body). An event h11 already has buffered, or a
write the kernel takes at once, costs nothing more than noting the deadline.
"""

from __future__ import annotations

import math

import trio

from kakuremichi import h1parse
from kakuremichi.gateway.http.timeouts import Waits

CHUNK = 65536
DEFAULT_MAX_HEADER_BYTES = 65536

# What a dead or reset peer raises from a Trio stream, whichever transport sits underneath.
STREAM_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)


class HttpConnection(Waits):
    """`next_event()`/`send()` over `stream`; `bytes_received` tells whether the peer said anything yet in this
    cycle; `deadline` is when the current read or write times out, whichever is sooner (inf while not waiting);
    `http` is the protocol state (h1parse.Connection); `chunk` is the most one read takes."""

    chunk = CHUNK

    def __init__(self, stream: trio.abc.Stream, server: bool,
                 max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES) -> None:
        super().__init__()
        self.stream = stream
        self.http = h1parse.Connection(server=server, max_header_bytes=max_header_bytes)
        self.bytes_received = 0
        self._unsent: list[bytes] = []  # queued events' bytes, written together by `flush`

    async def next_event(self, timeout: float = math.inf):
        """Next event from the peer within `timeout` seconds (enforced by a guard); EOF shows up as
        h1parse.CLOSED (or h1parse.Malformed)."""
        http = self.http
        event = http.next_event()
        if event is not h1parse.NEED_DATA:
            return event
        self.start_read(timeout)  # one deadline for the whole event, however many reads it takes
        try:
            while event is h1parse.NEED_DATA:
                data = await self.stream.receive_some(self.chunk)
                self.bytes_received += len(data)
                http.receive_data(data)
                event = http.next_event()
            return event
        finally:
            self.end_read()

    def buffered_event(self):
        """The next event if it can be had from bytes already received, else None (no waiting)."""
        event = self.http.next_event()
        return None if event is h1parse.NEED_DATA else event

    def queue(self, event) -> None:
        """Serialise `event` now, write it with the next `flush`: a small response's head, body and end
        leave in one write (one system call and one TCP segment) instead of three."""
        data = self.http.send(event)
        if data:
            self._unsent.append(data)

    async def flush(self, timeout: float = math.inf) -> None:
        """Write what `queue` collected; the peer has `timeout` seconds to take it (enforced by a guard)."""
        if not self._unsent:
            return
        data = b"".join(self._unsent) if len(self._unsent) > 1 else self._unsent[0]
        self._unsent.clear()
        self.start_write(timeout)
        try:
            await self.stream.send_all(data)
        finally:
            self.end_write()

    async def send(self, event, timeout: float = math.inf) -> None:
        self.queue(event)
        await self.flush(timeout)

    def start_next_cycle(self) -> None:
        """Begin the next request/response on a kept-alive connection."""
        self.http.start_next_cycle()
        self.bytes_received = 0

    @property
    def peer_erred(self) -> bool:
        """The peer's message was malformed: whatever it sends next is not to be parsed."""
        return self.http.their_state is h1parse.ERROR

    @property
    def reusable(self) -> bool:
        """Both sides finished a message cleanly and nobody asked to close: keep-alive may go on."""
        return self.http.reusable

    async def aclose(self) -> None:
        await trio.aclose_forcefully(self.stream)
