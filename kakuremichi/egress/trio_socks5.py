"""Driving the SOCKS5 handshakes over Trio streams: the only I/O around the sans-IO codec."""

from __future__ import annotations

import trio

from kakuremichi.egress import socks5

_CLOSED = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)


async def accept_request(stream: trio.abc.Stream, handshake: socks5.ServerHandshake
                         ) -> socks5.Request | socks5.Rejected:
    """Read the client's greeting and CONNECT request, answering the greeting; a broken stream is a
    Rejected too (the caller answers the Request with handshake.reply())."""
    try:
        while True:
            event = handshake.next_event()
            out = handshake.data_to_send()
            if out:
                await stream.send_all(out)
            if event is not socks5.NEED_DATA:
                return event
            handshake.receive_data(await stream.receive_some(4096))
    except _CLOSED as exc:
        return socks5.Rejected(socks5.GENERAL_FAILURE, f"connection lost during the handshake: {exc!r}")


async def refuse(stream: trio.abc.Stream, handshake: socks5.ServerHandshake, code: int, *,
                 timeout: float) -> None:
    """Answer the Request with the failure `code` if the client still listens, then close the stream."""
    with trio.move_on_after(timeout):
        try:
            await stream.send_all(handshake.reply(code))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the client did not wait for the answer
    await trio.aclose_forcefully(stream)


async def request_connect(stream: trio.abc.Stream, host: str, port: int) -> tuple[socks5.Connected | socks5.Failed,
                                                                                   bytes]:
    """Ask a SOCKS5 server on `stream` to connect to host:port: its answer, and any bytes that followed it.
    Raises trio.BrokenResourceError when the stream breaks before an answer (the server is not there)."""
    handshake = socks5.ClientHandshake(host, port)
    await stream.send_all(handshake.data_to_send())
    while True:
        event = handshake.next_event()
        if event is not socks5.NEED_DATA:
            return event, handshake.trailing_data
        data = await stream.receive_some(4096)
        if not data:
            raise trio.BrokenResourceError("the SOCKS5 server closed the connection without an answer")
        handshake.receive_data(data)
