"""The agent's local proxies, SOCKS5 and HTTP, whose connections leave through a gateway's exit.

Each one listens only while at least one enabled tunnel has it on, and follows config pushes: a
listener starts or stops without touching the connections already proxied (they run in the proxies'
own nursery, not the listener's), so a config change drops nothing it does not concern.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
from dataclasses import dataclass

import trio

from kakuremichi.egress import httpproxy, socks5
from kakuremichi.egress.dialer import ExitDialer, ExitFailed, ExitRoute
from kakuremichi.egress.trio_socks5 import accept_request, refuse
from kakuremichi.faults import Contained
from kakuremichi.logs import log
from kakuremichi.pipe import contained, splice
from kakuremichi.protocol import TunnelMapping

logger = logging.getLogger("kakuremichi.agent.exit")

HANDSHAKE_TIMEOUT = 30.0


@dataclass(frozen=True)
class ProxyListen:
    """Where the local proxies listen when a tunnel turns them on (loopback: only this machine may use them)."""

    socks: tuple[str, int] = ("127.0.0.1", 1080)
    http: tuple[str, int] = ("127.0.0.1", 3128)


def exit_routes(tunnels: list[TunnelMapping], kind: str) -> list[ExitRoute] | None:
    """The ways out for the `kind` ("socks" or "http") proxy; None when no enabled tunnel has it on."""
    chosen = [t for t in tunnels if t.enabled and (t.socks_proxy if kind == "socks" else t.http_proxy)]
    if not chosen:
        return None
    return [ExitRoute(t.agent_ip, gateway_ip) for t in chosen for gateway_ip in t.gateway_ips]


class LocalProxies:
    def __init__(self, dialer: ExitDialer, listen: ProxyListen | None = None) -> None:
        self.dialer = dialer
        self.listen = listen or ProxyListen()
        self.routes: dict[str, list[ExitRoute]] = {}  # kind -> ways out, for the kinds some tunnel turned on
        self.ports: dict[str, int] = {}  # kind -> the port it listens on, while it does
        self._scopes: dict[str, trio.CancelScope] = {}
        self._nursery: trio.Nursery | None = None
        self.faults = Contained(logger, "local proxy connection")

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started(self)
            await trio.sleep_forever()

    async def update(self, tunnels: list[TunnelMapping]) -> None:
        """Start the proxies some tunnel turned on, stop the others."""
        for kind in ("socks", "http"):
            routes = exit_routes(tunnels, kind)
            if routes is None:
                self.routes.pop(kind, None)
                if kind in self._scopes:
                    self._scopes.pop(kind).cancel()
                continue
            self.routes[kind] = routes
            if kind not in self._scopes and self._nursery is not None:
                await self._nursery.start(self._serve, kind)

    async def _serve(self, kind: str, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        host, port = getattr(self.listen, kind)
        serve = self._socks if kind == "socks" else functools.partial(httpproxy.serve, open_exit=
                                                                      functools.partial(self._open, "http"))
        handler = functools.partial(self._guarded, kind, serve)
        try:
            listeners = await trio.open_tcp_listeners(port, host=host)
        except OSError as exc:
            log(logger, logging.ERROR, "local proxy cannot listen; free the port or choose another",
                proxy=kind, address=f"{host}:{port}", error=exc.strerror or str(exc))
            task_status.started()
            return
        with trio.CancelScope() as scope:
            self._scopes[kind] = scope
            self.ports[kind] = listeners[0].socket.getsockname()[1]
            try:
                if not _is_loopback(host):
                    log(logger, logging.WARNING, "local proxy listens beyond this machine: anyone who reaches it "
                        "sends traffic out through your gateways", proxy=kind, address=f"{host}:{port}")
                log(logger, logging.INFO, "local proxy listening", proxy=kind, address=f"{host}:{self.ports[kind]}")
                await trio.serve_listeners(handler, listeners, handler_nursery=self._nursery, task_status=task_status)
            finally:
                if self._scopes.get(kind) is scope:
                    del self._scopes[kind]
                if kind not in self._scopes:  # else a listener started since (off, then on again) owns the port
                    self.ports.pop(kind, None)
                log(logger, logging.INFO, "local proxy stopped", proxy=kind)

    async def _open(self, kind: str, host: str, port: int) -> tuple[trio.abc.Stream, bytes]:
        return await self.dialer.open(self.routes.get(kind, []), host, port)

    async def _guarded(self, kind: str, serve, stream: trio.SocketStream) -> None:
        await contained(lambda: serve(stream), stream, self.faults, proxy=kind)

    async def _socks(self, stream: trio.SocketStream) -> None:
        handshake = socks5.ServerHandshake()
        request = socks5.Rejected(socks5.TTL_EXPIRED, "no request in time")
        with trio.move_on_after(HANDSHAKE_TIMEOUT):
            request = await accept_request(stream, handshake)
        if isinstance(request, socks5.Rejected):
            log(logger, logging.INFO, "local SOCKS5 client rejected", reason=request.reason)
            await trio.aclose_forcefully(stream)
            return
        try:
            upstream, early = await self._open("socks", request.host, request.port)
        except ExitFailed as exc:
            log(logger, logging.INFO, "exit connection failed", destination=f"{request.host}:{request.port}",
                error=str(exc))
            await refuse(stream, handshake, exc.code, timeout=5)
            return
        try:
            await stream.send_all(handshake.reply(socks5.SUCCEEDED))
            if handshake.trailing_data:
                await upstream.send_all(handshake.trailing_data)
            if early:
                await stream.send_all(early)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            await trio.aclose_forcefully(upstream)
            await trio.aclose_forcefully(stream)
            return
        await splice(stream, upstream)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
