"""The gateway's public tcp and udp ports: one TCP listener or UDP socket per tcp/udp tunnel, opened and
closed as configs are pushed, each connection or flow carried to the tunnel's agent through WireGuard
(agent_ip:TUNNEL_PORT, from this gateway's address in the tunnel: the agent knows the tunnel by the address).
With several backends, each new connection or flow picks one (gateway/portbackends.py); a connection whose
agent cannot be reached tries the next backend once. A draining backend keeps what it already carries.

A port that moves or goes away closes its listener only: the connections accepted on it carry on (the agent
ends those of a tunnel disabled, deleted or re-targeted). A port this gateway cannot bind is kept in `errors`
(reported to control with the stats, shown on the tunnel) and tried again at the next config. A client the
agent refuses (the target refused it) gets a reset. One log line per TCP connection and per UDP flow.
"""

from __future__ import annotations

import errno
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from kakuremichi import proxyprotocol
from kakuremichi.bridge import bridge
from kakuremichi.gateway import portbackends
from kakuremichi.gateway.backends import Backends
from kakuremichi.faults import Contained
from kakuremichi.gateway.listeners import PORT_SHARING, open_listeners
from kakuremichi.gateway.portaccess import SourceCounts
from kakuremichi.gateway.portopening import Opening
from kakuremichi.leansocket import LeanSocketStream
from kakuremichi.logs import log
from kakuremichi.netstack.streams import TcpStream, UdpSocket
from kakuremichi.pipe import CHUNK, contained
from kakuremichi.protocol import TUNNEL_PORT, PortRoute, RouteBackend

logger = logging.getLogger("kakuremichi.gateway.ports")
Key = tuple[str, int]  # (protocol, public port)
Dial = Callable[[str, int, str], Awaitable[TcpStream]]  # (agent address, port, what) → stream
DIAL_TIMEOUT = 10.0  # seconds for the agent to answer a connection (its tunnel address may not be up yet)
UDP_BATCH = 64  # datagrams read from a socket before the others get a turn
UDP_MAX_DATAGRAM = 65535


class PortListeners:
    """Every tcp/udp tunnel's public port on `host`; `shared`: with the gateway's other workers (SO_REUSEPORT)."""

    def __init__(self, host: str | None, shared: bool, dial: Dial, stack: Any, backends: Backends) -> None:
        self.host, self.shared, self._dial, self._stack = host, shared, dial, stack
        self.backends = backends  # the gateway's balancing and liveness, shared with its HTTP routes
        self.routes: dict[Key, PortRoute] = {}  # the current route of each open port, read at each accept
        self.errors: dict[str, str] = {}  # tunnel id → why its port cannot be bound here
        self._open: dict[Key, trio.CancelScope] = {}
        self._sources = SourceCounts()
        self._nursery: trio.Nursery | None = None
        self.active = 0  # connections and flows
        self.faults = Contained(logger, "tcp/udp tunnel")

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    async def update(self, routes: list[PortRoute]) -> None:
        """Open the ports of `routes` (the enabled ones) not yet open, close those no longer wanted."""
        wanted = {(r.protocol, r.public_port): r for r in routes if r.enabled}
        moved = [key for key in self._open if key not in wanted or wanted[key].tunnel_id != self.routes[key].tunnel_id]
        for key in moved:
            self._open.pop(key).cancel()
            del self.routes[key]
        self.routes.update({key: route for key, route in wanted.items() if key in self._open})
        self.errors = {}
        for key, route in wanted.items():
            if key not in self._open:
                try:
                    scope = await self._nursery.start(self._serve, route)
                except OSError as exc:
                    self.errors[route.tunnel_id] = f"{key[0]} port {key[1]}: {exc.strerror or exc}"
                    log(logger, logging.WARNING, "cannot listen on a tunnel's port", tunnel=route.tunnel_id,
                        protocol=key[0], port=key[1], error=exc.strerror or str(exc))
                    continue
                self._open[key], self.routes[key] = scope, route

    async def _serve(self, route: PortRoute, *, task_status) -> None:
        key = (route.protocol, route.public_port)
        with trio.CancelScope() as scope:
            if route.protocol == "tcp":
                listeners = await open_listeners(route.public_port, self.host, self.shared)
                log(logger, logging.INFO, "listening", tunnel=route.tunnel_id, protocol="tcp", port=route.public_port)
                task_status.started(scope)
                await trio.serve_listeners(
                    lambda client: contained(lambda: self._tcp(key, client), client, self.faults, port=key[1]),
                    listeners, handler_nursery=self._nursery)
            else:
                sockets = await self._udp_sockets(route.public_port)
                log(logger, logging.INFO, "listening", tunnel=route.tunnel_id, protocol="udp", port=route.public_port)
                task_status.started(scope)
                async with trio.open_nursery() as nursery:
                    for sock in sockets:
                        nursery.start_soon(UdpPort(self, key, sock).run)

    # -- tcp ----------------------------------------------------------------------------------------------

    async def _tcp(self, key: Key, client: LeanSocketStream) -> None:
        route = self.routes.get(key)
        try:
            peer, local = client.socket.getpeername()[:2], client.socket.getsockname()[:2]
        except OSError:
            peer = local = None
        refusal = ("the port is closing" if route is None
                   else "the agent stopped" if route.agent_stopped and not route.backends
                   else peer and self._sources.refusal(route, peer[0], time.time()))
        if route is None or peer is None or refusal:
            if route is not None and peer is not None:
                log(logger, logging.INFO, "tcp connection refused", tunnel=route.tunnel_id,
                    client=_text(peer), reason=refusal)
            client.reset_on_close()
            await trio.aclose_forcefully(client)
            return
        with self._sources.holding(route, peer[0]):
            self.active += 1
            try:
                await self._carry_tcp(route, client, peer, local)
            finally:
                self.active -= 1

    async def _carry_tcp(self, route: PortRoute, client: LeanSocketStream, peer, local) -> None:
        started = trio.current_time()
        opening = Opening(client) if route.backends else None  # with several backends, a refusal may go elsewhere
        upstream, first, tried = None, b"", []
        while upstream is None and len(tried) < 2:  # a dial that fails, or a reset first, tries the next one once
            backend = portbackends.choose(self.backends, route, peer[0], tried)
            if backend is None:
                if not tried:
                    log(logger, logging.WARNING, "tcp connection refused", tunnel=route.tunnel_id,
                        client=_text(peer), reason="no backend is usable")
                break
            tried.append(backend.id)
            upstream = await self._dial_backend(route, backend, peer, local)
            if upstream is not None and opening is not None:
                first = await opening.run(upstream)
                if first is None:
                    await trio.aclose_forcefully(upstream)
                    upstream = None
                    if opening.client_gone or not opening.replayable:
                        break
                    log(logger, logging.WARNING, "tcp connection: reset before its target answered",
                        tunnel=route.tunnel_id, client=_text(peer), backend=backend.id)
        if upstream is None:
            client.reset_on_close()
            await trio.aclose_forcefully(client)
            return
        with portbackends.holding(self.backends, route, backend):
            try:
                await client.send_all(first)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass  # the bridge below finds it broken too
            # an agent's connection that is reset (its target refused it, or the agent went away) resets the
            # client's too, instead of closing it: the client must know the exchange failed
            received, sent, was_reset = await bridge(upstream, client, CHUNK, reset_follows=True)
        if opening is not None:
            sent, received = sent + opening.forwarded, received + len(first)
        log(logger, logging.INFO, "tcp connection", tunnel=route.tunnel_id, client=_text(peer), backend=backend.id,
            bytes_in=sent, bytes_out=received, duration=f"{trio.current_time() - started:.3f}",
            reset=was_reset)

    async def _dial_backend(self, route: PortRoute, backend: RouteBackend, peer, local) -> TcpStream | None:
        """A connection to the backend's agent, the PROXY header sent (None: the agent did not answer, or went
        silent meanwhile)."""
        upstream = None
        try:
            with trio.fail_after(DIAL_TIMEOUT), trio.CancelScope() as silenced, \
                    self.backends.waiting(backend.address, silenced, None):
                upstream = await self._dial(backend.address, TUNNEL_PORT, f"tunnel {route.tunnel_id}")
            error = "the agent went silent"
        except (trio.TooSlowError, OSError) as exc:
            error = (f"the agent did not answer within {DIAL_TIMEOUT:g} s" if isinstance(exc, trio.TooSlowError)
                     else exc.strerror or str(exc))
        if upstream is None:
            log(logger, logging.WARNING, "tcp connection: agent unreachable", tunnel=route.tunnel_id,
                client=_text(peer), backend=backend.id, error=error)
            return None
        try:
            if route.proxy_protocol:
                await upstream.send_all(proxyprotocol.encode(route.proxy_protocol, "tcp", peer, local))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # what follows finds it broken and resets the client
        return upstream

    # -- udp ----------------------------------------------------------------------------------------------

    async def _udp_sockets(self, port: int) -> list[trio.socket.SocketType]:
        sockets = []
        try:
            for family, kind, proto, _, address in await trio.socket.getaddrinfo(
                    self.host, port, type=socket.SOCK_DGRAM, flags=socket.AI_PASSIVE):
                sock = trio.socket.socket(family, kind, proto)
                sockets.append(sock)
                if self.shared and PORT_SHARING is not None:
                    sock.setsockopt(socket.SOL_SOCKET, PORT_SHARING, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                await sock.bind(address)
        except BaseException:
            for sock in sockets:
                sock.close()
            raise
        return sockets


class UdpPort:
    """One public UDP socket of a udp tunnel: a flow per client address and port, each with a netstack socket
    of its own (so the agent tells the flows apart by source port), closed after the tunnel's idle timeout."""

    def __init__(self, ports: PortListeners, key: Key, sock: trio.socket.SocketType) -> None:
        self.ports, self.key, self.sock = ports, key, sock
        self.flows: dict[tuple, UdpFlow] = {}

    @property
    def route(self) -> PortRoute | None:
        return self.ports.routes.get(self.key)

    async def run(self) -> None:
        with self.sock:
            async with trio.open_nursery() as nursery:
                while True:
                    for data, client in await receive_batch(self.sock):
                        try:
                            self._forward(nursery, data, client)
                        except Exception as exc:  # that datagram only
                            self.ports.faults.record(exc, port=self.key[1], client=_text(client))

    def _forward(self, nursery: trio.Nursery, data: bytes, client: tuple) -> None:
        flow = self.flows.get(client)
        route = self.route
        if route is None:
            return
        if flow is None:
            refusal = self.ports._sources.refusal(route, client[0], time.time())
            if refusal is None and len(self.flows) >= route.udp_max_flows:
                refusal = f"the tunnel already has {route.udp_max_flows} flows (udpMaxFlows)"
            backend = None if refusal else portbackends.choose(self.ports.backends, route, client[0])
            if refusal is None and backend is None:
                refusal = "no backend is usable"
            if refusal is not None:
                log(logger, logging.DEBUG, "udp datagram dropped", tunnel=route.tunnel_id, client=_text(client),
                    reason=refusal)
                return
            flow = self.flows[client] = UdpFlow(self, route, client, backend)
            nursery.start_soon(flow.run)
        flow.send(route, data)


class UdpFlow:
    def __init__(self, port: UdpPort, route: PortRoute, client: tuple, backend: RouteBackend) -> None:
        self.port, self.client, self.backend = port, client, backend
        self.agent = (backend.address, TUNNEL_PORT)
        self.inner: UdpSocket = port.ports._stack.udp_socket(0, address=route.gateway_ip)
        self.scope = trio.CancelScope(deadline=trio.current_time() + route.udp_idle_timeout)
        self.local = port.sock.getsockname()[:2]  # the wildcard address when bound to every interface
        self.datagrams = [0, 0]  # in, out
        self.bytes = [0, 0]

    def send(self, route: PortRoute, data: bytes) -> None:
        """A client's datagram to the agent (with a v2 PROXY header if the tunnel asks for one)."""
        self.scope.deadline = trio.current_time() + route.udp_idle_timeout
        if route.proxy_protocol:
            data = proxyprotocol.encode("v2", "udp", self.client[:2], self.local) + data
        self.datagrams[0] += 1
        self.bytes[0] += len(data)
        if not self.inner.endpoint.closed:
            self.port.ports._stack.udp_send(self.inner.endpoint, data, self.agent)

    async def run(self) -> None:
        route, ports = self.port.route, self.port.ports
        started = trio.current_time()
        ports.active += 1
        try:
            with ports._sources.holding(route, self.client[0]), \
                    portbackends.holding(ports.backends, route, self.backend), self.inner, self.scope:
                await self._answer(route)
        except trio.ClosedResourceError:
            pass  # our address in the tunnel went away: the tunnel was deleted
        except Exception as exc:  # this flow only
            ports.faults.record(exc, port=route.public_port, client=_text(self.client))
        finally:
            ports.active -= 1
            del self.port.flows[self.client]
            log(logger, logging.INFO, "udp flow", tunnel=route.tunnel_id, client=_text(self.client),
                backend=self.backend.id,
                datagrams_in=self.datagrams[0], datagrams_out=self.datagrams[1], bytes_in=self.bytes[0],
                bytes_out=self.bytes[1], duration=f"{trio.current_time() - started:.3f}")


    async def _answer(self, route: PortRoute) -> None:
        """The agent's datagrams back to the client, until the flow has been idle for its timeout."""
        while True:
            data, source = await self.inner.recvfrom()
            if source != self.agent:
                continue
            self.scope.deadline = trio.current_time() + (self.port.route or route).udp_idle_timeout
            try:
                await self.port.sock.sendto(data, self.client)
            except OSError:
                continue  # a client that is gone (ICMP unreachable): the idle timeout ends the flow
            self.datagrams[1] += 1
            self.bytes[1] += len(data)


async def receive_batch(sock: trio.socket.SocketType, limit: int = UDP_BATCH) -> list[tuple[bytes, tuple]]:
    """The datagrams waiting on `sock` (at least one, at most `limit`), read without a wait between them."""
    batch = [await sock.recvfrom(UDP_MAX_DATAGRAM)]
    while len(batch) < limit:
        try:
            batch.append(sock._sock.recvfrom(UDP_MAX_DATAGRAM))  # the non-blocking stdlib socket trio wraps
        except (BlockingIOError, InterruptedError):
            break
        except OSError as exc:
            if exc.errno in (errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH):
                continue  # an ICMP error for an earlier send
            raise
    return batch


def _text(address: tuple) -> str:
    host, port = address[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
