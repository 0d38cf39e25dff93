"""The start of a tcp tunnel's connection through an agent, until the target's first byte. The agent accepts
the gateway's connection before it connects to its target and resets it when the target refuses: a reset
before any byte from the target means this backend could not take the connection, and what the client sent
meanwhile (kept, up to REPLAY_LIMIT) can be sent again to another backend, the client none the wiser.
"""

from __future__ import annotations

import trio

from kakuremichi.pipe import CHUNK

REPLAY_LIMIT = 64 * 1024  # bytes of the client's kept for another backend; beyond, the connection stays where it is


class Opening:
    """One client connection's opening, across the backends it tries."""

    def __init__(self, client: trio.abc.Stream) -> None:
        self.client = client
        self.sent = bytearray()  # what the client sent before the target answered
        self.eof = False  # the client has finished sending
        self.replayable = True  # `sent` is everything it sent (no more than REPLAY_LIMIT)
        self.client_gone = False
        self.forwarded = 0  # bytes of the client's the last agent got

    async def run(self, upstream: trio.abc.HalfCloseableStream) -> bytes | None:
        """The target's first bytes (b"": it closed first, or the client sent more than REPLAY_LIMIT first and the
        connection carries on as it is); None: the agent reset the connection before any (or the client left:
        `client_gone`)."""
        try:
            if self.sent:
                await upstream.send_all(self.sent)
            if self.eof:
                await upstream.send_eof()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return None
        self.forwarded = len(self.sent)
        answer: list[bytes | None] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._forward, upstream, nursery.cancel_scope)
            try:
                answer.append(await upstream.receive_some(CHUNK))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                answer.append(None)
            nursery.cancel_scope.cancel()
        return None if self.client_gone else answer[0] if answer else b""

    async def _forward(self, upstream: trio.abc.HalfCloseableStream, opening: trio.CancelScope) -> None:
        """The client's bytes to the agent while the target has not answered, kept for a replay."""
        while not self.eof:
            try:
                data = await self.client.receive_some(CHUNK)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self.client_gone = True
                opening.cancel()
                return
            past_limit = len(self.sent) + len(data) > REPLAY_LIMIT
            if past_limit:
                self.replayable = False
            else:
                self.sent += data  # kept before the send: a reset during it must not lose them
            with trio.CancelScope(shield=True):  # a send cut short would lose bytes the agent may have had
                try:
                    if data:
                        await upstream.send_all(data)
                        self.forwarded += len(data)
                    else:
                        self.eof = True
                        await upstream.send_eof()
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return  # reset: the receive sees it too
            if past_limit:
                opening.cancel()  # past replaying: the bridge carries the connection from here
                return
