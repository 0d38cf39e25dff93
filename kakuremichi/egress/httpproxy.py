"""The agent's local HTTP proxy, one request per client connection: `CONNECT host:port` becomes a
tunnel through the exit (200, then bytes both ways); an absolute-form `http://` request is sent on
through the exit in origin form, like any forward proxy, and its response relayed until the origin
closes (we ask it to with `Connection: close`).
"""

from __future__ import annotations

import logging
from typing import Awaitable, Callable
from urllib.parse import urlsplit

import h11
import trio

from kakuremichi.egress import socks5
from kakuremichi.egress.dialer import ExitFailed
from kakuremichi.httpheaders import strip_hop_by_hop
from kakuremichi.logs import log
from kakuremichi.pipe import CHUNK, splice
from kakuremichi.values import Endpoint, InvalidEndpoint

logger = logging.getLogger("kakuremichi.agent.exit")

HEAD_TIMEOUT = 30.0
STATUS_FOR_REPLY = {socks5.NOT_ALLOWED: 403, socks5.TTL_EXPIRED: 504}  # any other failure: 502 Bad Gateway

OpenExit = Callable[[str, int], Awaitable[tuple[trio.abc.Stream, bytes]]]


class BadRequest(Exception):
    pass


def split_authority(target: str, default_port: int | None = None) -> tuple[str, int]:
    """`host:port` or `[v6]:port` of a CONNECT request (or of an http:// URL, port 80 by default)."""
    try:
        return Endpoint.parse(target, default_port).address
    except InvalidEndpoint as exc:
        raise BadRequest(f"expected host:port: {exc}") from None


def destination(request: h11.Request) -> tuple[str, int]:
    target = request.target.decode("ascii")  # h11 lets bytes above 0x7f through; URLs have none (UnicodeError: 400)
    if request.method == b"CONNECT":
        return split_authority(target)
    try:
        parts = urlsplit(target)  # ValueError for a bracket left open ("http://[::1/")
    except ValueError as exc:
        raise BadRequest(f"malformed URL {target!r}: {exc}") from None
    if parts.scheme != "http" or not parts.netloc:
        raise BadRequest("this is a proxy: send absolute http:// URLs, or CONNECT for anything else")
    return split_authority(parts.netloc.rpartition("@")[2], 80)


def origin_request(request: h11.Request) -> h11.Request:
    """The request as the origin server gets it: origin-form target, the URL's Host, no hop-by-hop headers,
    one request."""
    parts = urlsplit(request.target.decode("ascii"))
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    # RFC 9112 §3.2.2: the Host of an absolute-form request is the URL's, whatever Host header came with it
    headers = [(b"host", parts.netloc.rpartition("@")[2].encode())]
    headers += [(name, value) for name, value in strip_hop_by_hop(list(request.headers), keep=[b"transfer-encoding"])
                if name != b"host"]  # the body keeps its framing
    headers.append((b"connection", b"close"))
    return h11.Request(method=request.method, target=target.encode(), headers=headers)


async def next_event(stream: trio.abc.Stream, conn: h11.Connection):
    while True:
        event = conn.next_event()
        if event is not h11.NEED_DATA:
            return event
        conn.receive_data(await stream.receive_some(CHUNK))


async def send_error(stream: trio.abc.Stream, conn: h11.Connection, status: int, message: str) -> None:
    body = (message + "\n").encode()
    try:
        data = conn.send(h11.Response(status_code=status, headers=[
            (b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode()),
            (b"connection", b"close")]))
        data += conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage())
    except h11.LocalProtocolError:
        return  # too late for a response: closing is the answer
    with trio.move_on_after(5):
        try:
            await stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass


async def serve(stream: trio.abc.Stream, open_exit: OpenExit) -> None:
    """Serve one client connection (closing it at the end)."""
    conn = h11.Connection(h11.SERVER)
    try:
        with trio.fail_after(HEAD_TIMEOUT):
            request = await next_event(stream, conn)
        if not isinstance(request, h11.Request):
            return  # the client left before a request
        host, port = destination(request)
    except trio.TooSlowError:
        return await send_error(stream, conn, 408, "no request in time")
    except (h11.RemoteProtocolError, BadRequest, UnicodeError) as exc:
        return await send_error(stream, conn, 400, str(exc) or "malformed request")
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        return
    finally:
        if conn.our_state is not h11.SEND_RESPONSE:  # answered with an error or abandoned
            await trio.aclose_forcefully(stream)
    try:
        upstream, early = await open_exit(host, port)
    except ExitFailed as exc:
        await send_error(stream, conn, STATUS_FOR_REPLY.get(exc.code, 502), str(exc))
        await trio.aclose_forcefully(stream)
        return
    if request.method == b"CONNECT":
        await _tunnel(stream, conn, upstream, early)
    else:
        await _forward(stream, conn, request, upstream, early)
    log(logger, logging.DEBUG, "proxied", method=request.method.decode(), destination=f"{host}:{port}")


async def _tunnel(stream, conn: h11.Connection, upstream, early: bytes) -> None:
    try:
        await next_event(stream, conn)  # the end of the (bodiless) CONNECT request, so h11 lets us switch
        await stream.send_all(conn.send(h11.Response(status_code=200, headers=[],
                                                     reason=b"Connection established")))
        leftover, _closed = conn.trailing_data
        if leftover:
            await upstream.send_all(leftover)
        if early:
            await stream.send_all(early)
    except (h11.ProtocolError, trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        await trio.aclose_forcefully(upstream)
        await trio.aclose_forcefully(stream)
        return
    await splice(stream, upstream)


async def _forward(stream, conn: h11.Connection, request: h11.Request, upstream, early: bytes) -> None:
    origin = h11.Connection(h11.CLIENT)

    async def send_request() -> None:
        await upstream.send_all(origin.send(origin_request(request)))
        while True:
            event = await next_event(stream, conn)
            if isinstance(event, h11.Data):
                await upstream.send_all(origin.send(h11.Data(data=event.data)))
            elif isinstance(event, h11.EndOfMessage):
                await upstream.send_all(origin.send(h11.EndOfMessage()))
                return
            else:  # ConnectionClosed in the middle of the body
                raise trio.BrokenResourceError("the client left before the end of its request")

    async def relay_response(cancel_scope: trio.CancelScope) -> None:
        if early:
            await stream.send_all(early)
        while data := await upstream.receive_some(CHUNK):
            await stream.send_all(data)
        cancel_scope.cancel()  # the response is complete: whatever else the client sends is not read

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(send_request)
            nursery.start_soon(relay_response, nursery.cancel_scope)
    except* (h11.ProtocolError, trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass  # one side broke: both are closed below
    finally:
        with trio.CancelScope(shield=True):
            await trio.aclose_forcefully(upstream)
            await trio.aclose_forcefully(stream)
