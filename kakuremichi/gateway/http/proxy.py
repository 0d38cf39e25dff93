"""The proxy as the listeners hold it: the exchange engine with its HTTP/1.1 front bound to `serve`
(HTTPS connections that negotiate HTTP/2 go to http2.serve_http2 with the same proxy)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

from kakuremichi.gateway.backends import Backends
from kakuremichi.gateway.certs.challenges import ChallengeStore
from kakuremichi.gateway.http.engine import Engine, ProxySettings
from kakuremichi.gateway.http.http1 import serve_http1
from kakuremichi.gateway.http.upstream import Dial, PoolLimits, open_upstream_pool
from kakuremichi.gateway.routes import RouteTable


class Proxy(Engine):
    """The engine, serving HTTP/1.1 client connections."""

    async def serve(self, stream: trio.abc.Stream, *, scheme: str, peer_ip: str) -> None:
        """Serve one HTTP/1.1 client connection (already TLS-unwrapped for https) until it closes or idles out."""
        await serve_http1(self, stream, scheme=scheme, peer_ip=peer_ip)


@asynccontextmanager
async def open_proxy(routes: RouteTable, dial: Dial, settings: ProxySettings | None = None,
                     limits: PoolLimits | None = None,
                     challenges: ChallengeStore | None = None, backends: Backends | None = None
                     ) -> AsyncIterator[Proxy]:
    """A proxy whose upstream pool and timeout watchdog run for the `async with` block."""
    async with open_upstream_pool(dial, limits) as pool, trio.open_nursery() as nursery:
        proxy = Proxy(routes, pool, settings, challenges, backends)
        nursery.start_soon(proxy.watchdog.run)
        yield proxy
        nursery.cancel_scope.cancel()
