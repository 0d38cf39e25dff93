"""The public HTTP and HTTPS listeners: accept TCP, unwrap TLS, hand each connection to the proxy.

A failure in one connection must never take the listener down, so each handler logs what escaped
the proxy and closes only its own connection.
"""

from __future__ import annotations

import logging
import socket
import ssl
import sys

import trio

from kakuremichi.gateway.http.connection import STREAM_ERRORS
from kakuremichi.gateway.http.http2 import serve_http2
from kakuremichi.gateway.http.proxy import Proxy
from kakuremichi.leansocket import LeanSocketListener, LeanSocketStream
from kakuremichi.logs import log
from kakuremichi.pipe import contained

logger = logging.getLogger("kakuremichi.gateway.listeners")

# The socket option under which the kernel spreads the connections to one port among the sockets of several
# processes bound to it: Linux's SO_REUSEPORT, FreeBSD's SO_REUSEPORT_LB. None elsewhere: macOS and the other
# BSDs hand every connection to one of the sockets, Windows shares no port.
PORT_SHARING = getattr(socket, "SO_REUSEPORT_LB", None) or (
    socket.SO_REUSEPORT if sys.platform.startswith("linux") else None)


def _peer_ip(stream: LeanSocketStream) -> str:
    try:
        return stream.socket.getpeername()[0]
    except OSError:
        return "-"


async def _guarded(proxy: Proxy, stream: trio.abc.Stream, scheme: str, peer_ip: str, *, h2: bool = False) -> None:
    handle = (lambda: serve_http2(proxy, stream, peer_ip)) if h2 else (
        lambda: proxy.serve(stream, scheme=scheme, peer_ip=peer_ip))
    await contained(handle, stream, proxy.faults, client=peer_ip, scheme=scheme)


async def open_listeners(port: int, host: str | None, shared: bool) -> list[LeanSocketListener]:
    """TCP listeners on `host:port` as trio opens them, whose connections are LeanSocketStreams (every
    client is read and written at least once a request); `shared`: with PORT_SHARING too, so that each of
    the gateway's worker processes listens on the port and the kernel spreads the connections among them."""
    if not shared:
        return [LeanSocketListener(listener) for listener in await trio.open_tcp_listeners(port, host=host)]
    sockets = []
    try:
        for family, kind, proto, _, address in await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                                             flags=socket.AI_PASSIVE):
            sock = trio.socket.socket(family, kind, proto)
            sockets.append(sock)  # closed with the others if a later one fails
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, PORT_SHARING, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            await sock.bind(address)
            sock.listen(socket.SOMAXCONN)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return [LeanSocketListener(trio.SocketListener(sock)) for sock in sockets]


async def serve_http(proxy: Proxy, port: int, host: str | None = None, shared: bool = False, *,
                     task_status: trio.TaskStatus[list[LeanSocketListener]] = trio.TASK_STATUS_IGNORED) -> None:
    """Plain HTTP on `host:port` (all interfaces when host is None); started() gets the listeners."""
    listeners = await open_listeners(port, host, shared)

    async def handle(stream: LeanSocketStream) -> None:
        await _guarded(proxy, stream, "http", _peer_ip(stream))

    task_status.started(listeners)
    await trio.serve_listeners(handle, listeners)


async def serve_https(proxy: Proxy, context: ssl.SSLContext, port: int, host: str | None = None,
                      shared: bool = False, *, handshake_timeout: float = 10.0,
                      task_status: trio.TaskStatus[list[LeanSocketListener]] = trio.TASK_STATUS_IGNORED) -> None:
    """HTTPS on `host:port`; `context` picks each connection's certificate by SNI (see certs/tls.py). Clients
    that negotiate "h2" by ALPN get HTTP/2 (http/http2.py), the others HTTP/1.1."""
    listeners = await open_listeners(port, host, shared)

    async def handle(stream: LeanSocketStream) -> None:
        peer_ip = _peer_ip(stream)
        tls_stream = trio.SSLStream(stream, context, server_side=True, https_compatible=True)
        try:
            with trio.fail_after(handshake_timeout):
                await tls_stream.do_handshake()
        except (trio.TooSlowError, *STREAM_ERRORS) as exc:
            log(logger, logging.DEBUG, "TLS handshake failed", client=peer_ip,
                error=str(exc.__cause__ or exc) or type(exc).__name__)
            await trio.aclose_forcefully(tls_stream)
            return
        await _guarded(proxy, tls_stream, "https", peer_ip, h2=tls_stream.selected_alpn_protocol() == "h2")

    task_status.started(listeners)
    await trio.serve_listeners(handle, listeners)
