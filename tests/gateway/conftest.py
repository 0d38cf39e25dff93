from __future__ import annotations

import ssl
from dataclasses import dataclass

import httpx
import pytest
import trio
from cryptography import x509

from kakuremichi.gateway.certs.challenges import ChallengeStore
from kakuremichi.gateway.http.proxy import Proxy, ProxySettings, open_proxy
from kakuremichi.gateway.http.upstream import PoolLimits
from kakuremichi.gateway.listeners import serve_http, serve_https
from kakuremichi.gateway.routes import Route, RouteTable
from tests.gateway.app import start_app


async def tcp_dial(route: Route) -> trio.abc.Stream:
    """What the daemon does through the netstack, done over loopback TCP."""
    return await trio.open_tcp_stream(route.address, route.port)


@dataclass
class Gateway:
    proxy: Proxy
    port: int
    https_port: int | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def routes(self) -> RouteTable:
        return self.proxy.routes


async def start_gateway(nursery: trio.Nursery, routes: RouteTable, *, dial=tcp_dial,
                        settings: ProxySettings | None = None, limits: PoolLimits | None = None,
                        challenges: ChallengeStore | None = None, tls_context=None,
                        http_port: int = 0) -> Gateway:
    """A gateway on 127.0.0.1: HTTP always, HTTPS too when given a TLS context."""
    async def run(task_status=trio.TASK_STATUS_IGNORED):
        async with open_proxy(routes, dial, settings, limits, challenges) as proxy, \
                trio.open_nursery() as inner:
            listeners = await inner.start(serve_http, proxy, http_port, "127.0.0.1")
            gateway = Gateway(proxy, listeners[0].socket.getsockname()[1])
            if tls_context is not None:
                listeners = await inner.start(serve_https, proxy, tls_context, 0, "127.0.0.1")
                gateway.https_port = listeners[0].socket.getsockname()[1]
            task_status.started(gateway)

    return await nursery.start(run)


@pytest.fixture
def pebble_processes():
    """Pebble instances a test started (tests.gateway.pebble), stopped afterwards."""
    started = []
    yield started
    for pebble in started:
        pebble.stop()


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


async def tls_handshake(port: int, server_name: str, context: ssl.SSLContext) -> trio.SSLStream:
    """A completed client handshake with `server_name` as SNI (and as the name verified)."""
    stream = trio.SSLStream(await trio.open_tcp_stream("127.0.0.1", port), context, server_hostname=server_name)
    await stream.do_handshake()
    return stream


def peer_certificate(stream: trio.SSLStream) -> x509.Certificate:
    return x509.load_der_x509_certificate(stream.getpeercert(binary_form=True))
