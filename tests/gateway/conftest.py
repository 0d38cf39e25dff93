from __future__ import annotations

from dataclasses import dataclass

import httpx
import pytest
import trio

from kakuremichi.gateway.challenges import ChallengeStore
from kakuremichi.gateway.listeners import serve_http
from kakuremichi.gateway.proxy import Proxy, ProxySettings
from kakuremichi.gateway.routes import Route, RouteTable
from kakuremichi.gateway.upstream import PoolLimits, open_upstream_pool
from tests.gateway.app import start_app


async def tcp_dial(route: Route) -> trio.abc.Stream:
    """What the daemon does through the netstack, done over loopback TCP."""
    return await trio.open_tcp_stream(route.address, route.port)


@dataclass
class Gateway:
    proxy: Proxy
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def routes(self) -> RouteTable:
        return self.proxy.routes


async def start_gateway(nursery: trio.Nursery, routes: RouteTable, *, dial=tcp_dial,
                        settings: ProxySettings | None = None, limits: PoolLimits | None = None,
                        challenges: ChallengeStore | None = None) -> Gateway:
    async def run(task_status=trio.TASK_STATUS_IGNORED):
        async with open_upstream_pool(dial, limits) as pool, trio.open_nursery() as inner:
            proxy = Proxy(routes, pool, settings, challenges)
            listeners = await inner.start(serve_http, proxy, 0, "127.0.0.1")
            task_status.started(Gateway(proxy, listeners[0].socket.getsockname()[1]))

    return await nursery.start(run)


@pytest.fixture
async def app_port(nursery):
    return await start_app(nursery, "app")


@pytest.fixture
async def gateway(nursery, app_port):
    return await start_gateway(nursery, RouteTable([Route("app.test", "127.0.0.1", app_port)]))


@pytest.fixture
async def client(gateway):
    async with httpx.AsyncClient(base_url=gateway.url, headers={"host": "app.test"}, timeout=30) as c:
        yield c
