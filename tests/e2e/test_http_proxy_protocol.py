"""An http tunnel with proxyProtocol (issue 15): nginx behind it (`listen … proxy_protocol`) sees each client
connection's own address and port, and a client's keep-alive requests share one upstream connection (one
header, several requests). Every part a separate process: control, a gateway, an agent, nginx."""

from __future__ import annotations

import http.client

import pytest

from tests.deployment import Deployment, wait_for
from tests.e2e.test_port_tunnels import _listening, need
from tests.nginx import proxy_protocol_nginx

DOMAIN = "pp.example.com"


@pytest.fixture
def nginx(tmp_path):
    """nginx wanting a PROXY header; each answer tells the header's address and port, and nginx's own serial
    number of the connection and the request's number on it."""
    need("nginx", package="nginx")
    variables = "$proxy_protocol_addr:$proxy_protocol_port $connection $connection_requests"
    with proxy_protocol_nginx(tmp_path / "nginx", variables, variables, _listening) as served:
        yield served


@pytest.fixture
def deployment(tmp_path):
    d = Deployment(tmp_path, {}, gateways=("gw1",))
    yield d
    d.close()


class Client:
    """One client connection to the gateway (keep-alive), and what nginx said of each of its requests."""

    def __init__(self, port: int) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        self.conn.connect()
        self.port = self.conn.sock.getsockname()[1]

    def get(self) -> tuple[str, str, int] | None:
        """(address:port, nginx connection serial, its request number) from nginx, None if not through."""
        self.conn.request("GET", "/", headers={"Host": DOMAIN})
        response = self.conn.getresponse()
        body = response.read().decode()
        if response.status != 200:
            return None
        address, serial, count = body.split()
        return address, serial, int(count)

    def close(self) -> None:
        self.conn.close()


def _seen(deployment: Deployment, version: str) -> None:
    """Two client connections through the gateway: each seen by nginx with its own port, each one's requests on
    one upstream connection."""
    gateway_port = deployment.gateways["gw1"][1]
    first, second = Client(gateway_port), Client(gateway_port)
    try:
        answers = {client: [client.get() for _ in range(3)] for client in (first, second)}
        for client, seen in answers.items():
            assert {a for a, _, _ in seen} == {f"127.0.0.1:{client.port}"}, (version, seen)
            assert len({serial for _, serial, _ in seen}) == 1, (version, seen)  # one upstream connection
            assert [n for _, _, n in seen] == [seen[0][2], seen[0][2] + 1, seen[0][2] + 2], (version, seen)
        assert answers[first][0][1] != answers[second][0][1]  # never one shared by two client connections
    finally:
        first.close()
        second.close()


def _through(deployment: Deployment) -> bool:
    response = deployment.get("gw1", DOMAIN)
    return response is not None and response.status_code == 200


def test_nginx_sees_each_client_connection_through_an_http_tunnel(deployment, nginx):
    port, log = nginx
    tunnel = deployment.api.post("/api/tunnels", json={
        "domain": DOMAIN, "agentId": deployment.agent_id, "target": f"127.0.0.1:{port}", "tlsMode": "off",
        "proxyProtocol": "v1"}).json()
    assert tunnel["proxyProtocol"] == "v1"
    wait_for(lambda: _through(deployment), 30, "nginx through the http tunnel with PROXY v1")
    _seen(deployment, "v1")
    assert "127.0.0.1:" in log.read_text()

    patched = deployment.api.patch(f"/api/tunnels/{tunnel['id']}", json={"proxyProtocol": "v2"})
    assert patched.status_code == 200 and patched.json()["proxyProtocol"] == "v2"
    wait_for(lambda: _through(deployment), 30, "nginx through the http tunnel with PROXY v2")
    _seen(deployment, "v2")

    deployment.api.patch(f"/api/tunnels/{tunnel['id']}", json={"proxyProtocol": None})
    wait_for(lambda: (r := deployment.get("gw1", DOMAIN)) is not None and r.status_code == 502, 30,
             "nginx refusing requests without the header")  # so the header was what let them through
