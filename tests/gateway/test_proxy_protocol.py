"""Routes with a PROXY protocol version (http tunnels with proxyProtocol, issue 15) over real loopback sockets:
each upstream connection begins with the header naming its client connection, serves that connection only
(HTTP/1.1 keep-alive, every HTTP/2 stream of one connection), and is closed when the client connection ends."""

from __future__ import annotations

import json

import httpx
import pytest
import trio

from kakuremichi import proxyprotocol
from kakuremichi.gateway.certs.challenges import ChallengeStore
from kakuremichi.gateway.certs.manager import CertificateManager
from kakuremichi.gateway.certs.store import CertStore
from kakuremichi.gateway.routes import Route, RouteTable, TlsMode
from tests.gateway.conftest import start_gateway

HOST = "pp.test"


class HeaderApp:
    """An upstream that wants a PROXY header first (decoded strictly), then answers keep-alive GETs with what the
    header said and how many requests its connection carried."""

    def __init__(self) -> None:
        self.connections = 0
        self.open = 0
        self.port = 0

    async def run(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(self._serve, listeners)

    async def _serve(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        self.open += 1
        number, buffer, header, requests = self.connections, b"", None, 0
        try:
            async with stream:
                while True:
                    if header is None:
                        try:
                            header, used = proxyprotocol.decode(buffer)
                            buffer = buffer[used:]
                        except proxyprotocol.Incomplete:
                            pass
                    if header is not None and b"\r\n\r\n" in buffer:
                        _, buffer = buffer.split(b"\r\n\r\n", 1)
                        requests += 1
                        body = json.dumps({"version": header.version, "source": list(header.source),
                                           "connection": number, "requests": requests}).encode()
                        await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                                              b"content-length: %d\r\n\r\n" % len(body) + body)
                        continue
                    chunk = await stream.receive_some()
                    if not chunk:
                        return
                    buffer += chunk
        except (proxyprotocol.ProxyProtocolError, trio.BrokenResourceError):
            return  # no header: refused, as nginx's `listen … proxy_protocol` does
        finally:
            self.open -= 1


@pytest.fixture
async def app(nursery):
    app = HeaderApp()
    await nursery.start(app.run)
    return app


async def _wait_closed(app: HeaderApp) -> None:
    with trio.fail_after(5):
        while app.open:
            await trio.sleep(0.01)


@pytest.mark.parametrize("version", ["v1", "v2"])
async def test_each_client_connection_has_its_own_upstream_connections(nursery, app, version):
    gw = await start_gateway(nursery, RouteTable([Route(HOST, "127.0.0.1", app.port, proxy_protocol=version)]))
    seen = {}
    for name in ("first", "second"):
        async with httpx.AsyncClient(base_url=gw.url, headers={"host": HOST}) as client:
            answers = [(await client.get("/")).json() for _ in range(3)]
        ports = {tuple(a["source"]) for a in answers}
        seen[name] = answers
        assert len(ports) == 1 and next(iter(ports))[0] == "127.0.0.1"
        assert {a["version"] for a in answers} == {int(version[1])}
        assert [a["requests"] for a in answers] == [1, 2, 3]  # one header, several requests
        await _wait_closed(app)  # the client's connection gone, its upstream connection closed with it
    assert seen["first"][0]["connection"] != seen["second"][0]["connection"]
    assert seen["first"][0]["source"] != seen["second"][0]["source"]
    assert not gw.proxy.pool._idle


async def test_two_client_connections_at_once_never_share(nursery, app):
    gw = await start_gateway(nursery, RouteTable([Route(HOST, "127.0.0.1", app.port, proxy_protocol="v1")]))
    async with httpx.AsyncClient(base_url=gw.url, headers={"host": HOST}) as one, \
            httpx.AsyncClient(base_url=gw.url, headers={"host": HOST}) as two:
        answers = [(await client.get("/")).json() for client in (one, two, one, two)]
    assert answers[0]["source"] == answers[2]["source"] != answers[1]["source"] == answers[3]["source"]
    assert answers[0]["connection"] == answers[2]["connection"] != answers[1]["connection"]


async def test_every_http2_stream_of_a_connection_names_it(nursery, app, tmp_path):
    routes = RouteTable([Route(HOST, "127.0.0.1", app.port, tls=TlsMode.SELF_SIGNED, proxy_protocol="v2")])
    manager = CertificateManager(CertStore(tmp_path / "state"), ChallengeStore())
    manager.update_routes(routes)
    gw = await start_gateway(nursery, routes, tls_context=manager.context)
    async with httpx.AsyncClient(http2=True, verify=False, base_url=f"https://127.0.0.1:{gw.https_port}",
                                 headers={"host": HOST}) as client:
        answers = []

        async def get() -> None:
            response = await client.get("/")
            assert response.http_version == "HTTP/2"
            answers.append(response.json())

        await get()
        async with trio.open_nursery() as streams:
            for _ in range(8):
                streams.start_soon(get)
        await get()
    sources = {tuple(a["source"]) for a in answers}
    assert len(sources) == 1 and len(answers) == 10
    await _wait_closed(app)
    assert not gw.proxy.pool._idle


async def test_a_route_without_it_sends_no_header(nursery, app):
    gw = await start_gateway(nursery, RouteTable([Route(HOST, "127.0.0.1", app.port)]))
    async with httpx.AsyncClient(base_url=gw.url, headers={"host": HOST}) as client:
        assert (await client.get("/")).status_code == 502  # the app refused a connection without the header
