"""The gateway's exit: SOCKS5 on EXIT_PORT of its tunnel addresses, for the agents of exit tunnels.

WireGuard already proves who sends (a packet's source must lie in its peer's allowed IPs), so the
source address names the tunnel and no SOCKS authentication is needed: a connection is served only when
it comes from the agent address of a tunnel with the exit on, to this gateway's own address in that
tunnel's subnet. The destination is resolved and checked here (DestinationPolicy), then spliced.
"""

from __future__ import annotations

import collections
import errno
import itertools
import logging
import socket
import time

import trio

from kakuremichi.egress import socks5
from kakuremichi.egress.policy import DestinationPolicy, Refused
from kakuremichi.egress.trio_socks5 import accept_request, refuse
from kakuremichi.faults import Contained
from kakuremichi.logs import log
from kakuremichi.pipe import splice
from kakuremichi.protocol import EXIT_KEEPALIVE, EXIT_PORT, RouteConfig

logger = logging.getLogger("kakuremichi.gateway.exit")
_ids = itertools.count(1)

HANDSHAKE_TIMEOUT = 10.0  # an agent's proxy sends greeting and request at once; this is only for stuck peers
CONNECT_TIMEOUT = 10.0
# open exit connections one tunnel may hold: each costs the gateway a socket, and its file descriptors are
# shared with every other tenant and with the public listeners
MAX_CONNECTIONS_PER_TUNNEL = 1024
# new exit connections one agent address may open a second (bursts of as many): plenty for a browser or a
# crawler behind the exit, while a tenant opening them back to back cannot spend the gateway's thread, which
# every other tenant's requests share, on handshakes and dials (issue 13's fairness)
OPENS_PER_SECOND = 50


def reply_code(exc: BaseException) -> int:
    """The SOCKS5 reply for a failed connect to the destination."""
    if isinstance(exc, Refused):
        return socks5.NOT_ALLOWED
    if isinstance(exc, trio.TooSlowError):
        return socks5.TTL_EXPIRED  # RFC 1928's nearest to a timeout; the HTTP proxy makes it a 504
    if isinstance(exc, socket.gaierror):
        return socks5.HOST_UNREACHABLE
    if isinstance(exc, ConnectionRefusedError):
        return socks5.CONNECTION_REFUSED
    if isinstance(exc, OSError) and exc.errno == errno.ENETUNREACH:
        return socks5.NETWORK_UNREACHABLE
    if isinstance(exc, OSError) and exc.errno in (errno.EHOSTUNREACH, errno.ETIMEDOUT):
        return socks5.HOST_UNREACHABLE
    return socks5.GENERAL_FAILURE


async def connect_checked(policy: DestinationPolicy, host: str, port: int) -> trio.SocketStream:
    """Connect to the first permitted address `host` resolves to that answers (never to the name again)."""
    error: OSError | None = None
    for family, sockaddr in await policy.resolve(host, port):
        sock = trio.socket.socket(family, trio.socket.SOCK_STREAM)
        try:
            await sock.connect(sockaddr)
        except OSError as exc:
            sock.close()
            error = exc
            continue
        except BaseException:
            sock.close()
            raise
        return trio.SocketStream(sock)
    assert error is not None
    raise error


class ExitServer:
    def __init__(self, stack, policy: DestinationPolicy | None = None, *,
                 connect_timeout: float = CONNECT_TIMEOUT,
                 max_connections_per_tunnel: int = MAX_CONNECTIONS_PER_TUNNEL,
                 opens_per_second: float = OPENS_PER_SECOND,
                 keepalive: tuple[float, float, int] = EXIT_KEEPALIVE) -> None:
        self.stack = stack
        self.policy = policy or DestinationPolicy()
        self.connect_timeout = connect_timeout
        self.max_connections_per_tunnel = max_connections_per_tunnel
        self.opens_per_second = opens_per_second
        self.keepalive = keepalive
        self._tunnels: dict[tuple[str, str], str] = {}  # (our address, agent address) -> domain, exit tunnels only
        self._open: collections.Counter[tuple[str, str]] = collections.Counter()  # pair -> connections handled
        self._active: dict[object, tuple[str, str]] = {}  # tunnel stream past its connect -> (ours, agent's)
        self.faults = Contained(logger, "exit connection")

    @property
    def active_connections(self) -> int:
        return len(self._active)

    def update(self, routes: list[RouteConfig]) -> None:
        """Follow a pushed config: exits turned off (or tunnels gone) lose their live connections too."""
        self._tunnels = {(r.gateway_ip, r.agent_ip): r.domain for r in routes if r.exit and r.enabled}
        for stream, pair in list(self._active.items()):
            if pair not in self._tunnels:
                stream.abort()  # the splice ends as if the agent had reset it, and still counts its bytes

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        await self.stack.serve_tcp(self._guarded, EXIT_PORT, opens_per_second=self.opens_per_second,
                                   task_status=task_status)

    async def _guarded(self, stream) -> None:
        """Agents are other tenants: one may hold only so many connections, and whatever escapes one
        connection's handling closes that connection only, never the exit (nor the gateway around it)."""
        pair = (stream.local_address[0], stream.remote_address[0])
        if self._open[pair] >= self.max_connections_per_tunnel:
            log(logger, logging.WARNING, "exit refused: too many connections from this tunnel", source=pair[1],
                address=pair[0], limit=self.max_connections_per_tunnel)
            stream.abort()  # the agent's dialer tries its next gateway
            return
        self._open[pair] += 1
        try:
            await self._handle(stream)
        except Exception as exc:
            self.faults.record(exc, agent=pair[1])
            stream.abort()
        finally:
            self._open[pair] -= 1
            if not self._open[pair]:
                del self._open[pair]

    async def _handle(self, stream) -> None:
        conn = next(_ids)
        pair = (stream.local_address[0], stream.remote_address[0])
        domain = self._tunnels.get(pair)
        if domain is None:
            log(logger, logging.WARNING, "exit refused: no exit tunnel from this address", id=conn,
                source=pair[1], address=pair[0])
            stream.abort()
            return
        stream.set_keepalive(*self.keepalive)
        handshake = socks5.ServerHandshake()
        request = socks5.Rejected(socks5.TTL_EXPIRED, "no request in time")
        with trio.move_on_after(HANDSHAKE_TIMEOUT):
            request = await accept_request(stream, handshake)
        if isinstance(request, socks5.Rejected):
            log(logger, logging.WARNING, "exit handshake rejected", id=conn, tunnel=domain, reason=request.reason)
            await trio.aclose_forcefully(stream)  # after the rejection's reply, if there is one
            return
        destination = f"{request.host}:{request.port}"
        started = time.monotonic()
        try:
            with trio.fail_after(self.connect_timeout):
                upstream = await connect_checked(self.policy, request.host, request.port)
        except (OSError, Refused, trio.TooSlowError) as exc:
            code = reply_code(exc)
            log(logger, logging.WARNING, "exit connection refused" if code == socks5.NOT_ALLOWED
                else "exit destination unreachable", id=conn, tunnel=domain, destination=destination,
                reply=socks5.REPLY_TEXT[code], error=str(exc) or type(exc).__name__)
            await refuse(stream, handshake, code, timeout=1)
            return
        if pair not in self._tunnels:  # the exit was turned off while we connected: update() missed this one
            log(logger, logging.WARNING, "exit connection refused: the exit was turned off", id=conn, tunnel=domain,
                destination=destination)
            await trio.aclose_forcefully(upstream)
            await refuse(stream, handshake, socks5.NOT_ALLOWED, timeout=1)
            return
        self._active[stream] = pair  # from here on an update() turning the exit off aborts it, even mid-reply
        try:
            try:
                # the destination may have reset already: getpeername() then fails (ENOTCONN)
                peer, via = upstream.socket.getpeername()[0], upstream.socket.getsockname()[:2]
                await stream.send_all(handshake.reply(socks5.SUCCEEDED, via))
                if handshake.trailing_data:
                    await upstream.send_all(handshake.trailing_data)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                await trio.aclose_forcefully(upstream)
                stream.abort()
                return
            sent, received = await splice(stream, upstream)
        finally:
            del self._active[stream]
        log(logger, logging.INFO, "exit connection", id=conn, tunnel=domain, agent=pair[1],
            destination=destination, address=peer, via=f"{via[0]}:{via[1]}", bytes_out=sent, bytes_in=received,
            seconds=round(time.monotonic() - started, 3), closed_by_config=pair not in self._tunnels)
