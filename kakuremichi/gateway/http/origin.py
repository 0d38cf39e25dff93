"""A client connection as the PROXY protocol names it, for http tunnels whose target wants that header.

Such a tunnel's upstream connections begin with a header naming one client connection (its address and port,
and the gateway address and port it reached), so each serves that client connection only, as HAProxy's
send-proxy does: the pool keys them by their ClientOrigin (compared by identity: one key per client
connection, every HTTP/2 stream of it sharing it). When the client connection ends its origin is closed and its
pooled upstream connections are closed with it rather than left to the idle timeout: nobody else may use them,
and a busy gateway would otherwise hold one idle agent connection per departed client for that long.
"""

from __future__ import annotations

from collections.abc import Hashable

import trio

from kakuremichi import proxyprotocol
from kakuremichi.protocol import ProxyProtocol

_UNKNOWN = ("0.0.0.0", 0)  # a stream that is no socket (or one already gone): no address to tell


class ClientOrigin:
    """One client connection; its addresses are read from its socket only when a header is first wanted."""

    __slots__ = ("_stream", "_addresses", "closed", "keys")

    def __init__(self, stream: trio.abc.Stream) -> None:
        self._stream = stream
        self._addresses: tuple[proxyprotocol.Address, proxyprotocol.Address] | None = None
        self.closed = False  # the client connection ended: its upstream connections are not pooled any more
        self.keys: set[Hashable] = set()  # the pool keys its upstream connections were pooled under

    def header(self, version: ProxyProtocol) -> bytes:
        """The PROXY protocol header an upstream connection for this client connection begins with."""
        if self._addresses is None:
            self._addresses = _addresses(self._stream)
        return proxyprotocol.encode(version, "tcp", *self._addresses)


def _addresses(stream: trio.abc.Stream) -> tuple[proxyprotocol.Address, proxyprotocol.Address]:
    """(client, gateway) of the socket under `stream` (a TLS stream's transport, a plain TCP stream)."""
    while not hasattr(stream, "socket") and hasattr(stream, "transport_stream"):
        stream = stream.transport_stream
    try:
        peer, local = stream.socket.getpeername(), stream.socket.getsockname()
    except (AttributeError, OSError):
        return _UNKNOWN, _UNKNOWN
    if not isinstance(peer, tuple) or not isinstance(local, tuple):
        return _UNKNOWN, _UNKNOWN
    return (peer[0], peer[1]), (local[0], local[1])
