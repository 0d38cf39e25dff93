"""An h11 state machine bound to a Trio stream: the one place bytes meet HTTP events.

Both sides of the proxy use it — the client connection (h11 SERVER role) and each upstream
connection to an agent (h11 CLIENT role). Bytes are fed to h11 one chunk at a time and only when it
asks for more, so memory stays bounded by the chunk size plus the header limit.

A wait gives up after the `timeout` it was called with: the connection is a `timeouts.Waits` noting
when, and a `timeouts.Guard` covering the connection is cancelled once the wait outlives it (the
guard's `expired` then names the connection). A read's deadline may be pushed back while it waits
(`restart_read`: the agent took more of the request body). An event h11 already has buffered, or a
write the kernel takes at once, costs nothing more than noting the deadline.
"""

from __future__ import annotations

import math

import h11
import trio

from kakuremichi.gateway.http.timeouts import Waits

CHUNK = 65536
DEFAULT_MAX_HEADER_BYTES = 65536
# The largest chunk size a signed 64-bit length holds. h11 takes up to 20 hex digits into a Python int, so
# `fffffffffffffffff` (2**68 - 1) would pass; the servers behind the agents would wrap it (to 0, a body-less
# request smuggled past the gateway's view), so a bigger size is a malformed message (RFC 9112 §7.1).
MAX_CHUNK_SIZE = (1 << 63) - 1

# What a dead or reset peer raises from a Trio stream, whichever transport sits underneath.
STREAM_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)


class HttpConnection(Waits):
    """`next_event()`/`send()` over `stream`; `bytes_received` tells whether the peer said anything yet in this
    cycle; `deadline` is when the current read or write times out, whichever is sooner (inf while not waiting)."""

    def __init__(self, stream: trio.abc.Stream, role: type[h11.CLIENT] | type[h11.SERVER],
                 max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES) -> None:
        super().__init__()
        self.stream = stream
        self.h11 = h11.Connection(role, max_incomplete_event_size=max_header_bytes)
        self.bytes_received = 0
        self._unsent: list[bytes] = []  # queued events' bytes, written together by `flush`
        self._malformed: h11.RemoteProtocolError | None = None  # what _checked refused (h11 would read on)

    async def next_event(self, timeout: float = math.inf) -> h11.Event | type[h11.PAUSED]:
        """Next event from the peer within `timeout` seconds (enforced by a guard); EOF shows up as
        h11.ConnectionClosed (or RemoteProtocolError)."""
        waiting = False
        try:
            while True:
                if self._malformed is not None:
                    raise self._malformed
                event = self.h11.next_event()
                if event is not h11.NEED_DATA:
                    return self._checked(event)
                if not waiting:  # one deadline for the whole event, however many reads it takes
                    self.start_read(timeout)
                    waiting = True
                data = await self.stream.receive_some(CHUNK)
                self.bytes_received += len(data)
                self.h11.receive_data(data)
        finally:
            if waiting:
                self.end_read()

    def buffered_event(self) -> h11.Event | type[h11.PAUSED] | None:
        """The next event if h11 can produce it from bytes already received, else None (no waiting)."""
        event = self.h11.next_event()
        return None if event is h11.NEED_DATA else self._checked(event)

    def _checked(self, event: h11.Event | type[h11.PAUSED]) -> h11.Event | type[h11.PAUSED]:
        """`event`, unless it starts a chunk bigger than MAX_CHUNK_SIZE. h11 does not expose the size it
        parsed: its chunked reader keeps what is left of the chunk (tests/gateway pin this down)."""
        if isinstance(event, h11.Data) and event.chunk_start:
            left = getattr(getattr(self.h11, "_reader", None), "_bytes_in_chunk", 0)
            if len(event.data) + left > MAX_CHUNK_SIZE:
                self._malformed = h11.RemoteProtocolError(f"chunk size {len(event.data) + left:x} is too large",
                                                          400)
                raise self._malformed
        return event

    def queue(self, event: h11.Event) -> None:
        """Serialise `event` now, write it with the next `flush`: a small response's head, body and end
        leave in one write (one system call and one TCP segment) instead of three."""
        data = self.h11.send(event)
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

    async def send(self, event: h11.Event, timeout: float = math.inf) -> None:
        self.queue(event)
        await self.flush(timeout)

    def start_next_cycle(self) -> None:
        """Begin the next request/response on a kept-alive connection."""
        self.h11.start_next_cycle()
        self.bytes_received = 0

    @property
    def peer_erred(self) -> bool:
        """The peer's message was malformed: whatever it sends next is not to be parsed."""
        return self._malformed is not None or self.h11.their_state is h11.ERROR

    @property
    def reusable(self) -> bool:
        """Both sides finished a message cleanly and nobody asked to close: keep-alive may go on."""
        return self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE

    async def aclose(self) -> None:
        await trio.aclose_forcefully(self.stream)
