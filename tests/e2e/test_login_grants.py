"""A browser login opening a tcp tunnel's raw port (issue 16, "beyond the peers"), every part a separate process:
control, two gateways, an agent and an echo server. Before the login the port resets the client; after a password
login on the http tunnel the tcp tunnel names (loginTunnelId), the same client address is carried on both gateways;
revoking the http tunnel's sessions closes the port again. A udp tunnel drops the datagrams of a client without a
login, and carries them after one."""

from __future__ import annotations

import socket

import httpx
import pytest

from tests.deployment import Deployment, wait_for
from tests.e2e.test_port_tunnels import ECHO, UDP_ECHO, echoes, port_tunnel

PASSWORD = "correct horse battery"
HOSTS = ("127.0.0.1", "127.0.0.2")  # gw1's and gw2's listen address: the client is 127.0.0.1 to both


@pytest.fixture
def deployment(tmp_path):
    d = Deployment(tmp_path, {"echo": ("-c", ECHO), "udp_echo": ("-c", UDP_ECHO)}, gateways=("gw1",))
    d.gateway_args = ("--listen-host", "127.0.0.2")
    d.add_gateway("gw2")
    yield d
    d.close()


def reset(host: str, port: int) -> bool:
    """Whether a connection to `host:port` is reset rather than echoed."""
    try:
        with socket.create_connection((host, port), timeout=3) as conn:
            conn.sendall(b"x")
            conn.settimeout(5)
            conn.recv(10)
            return False
    except (ConnectionResetError, BrokenPipeError):
        return True
    except OSError:
        return False


def refused_for_login(d: Deployment, tunnel_id: str) -> bool:
    """Whether both gateways have refused a connection for want of a login (probing once more first)."""
    port_refusals = [reset(host, d.port) for host in HOSTS]
    logs = [(d.tmp / f"gateway{name}.log").read_text() for name in ("gw1", "gw2")]
    return all(port_refusals) and all(
        f"tcp connection refused tunnel={tunnel_id}" in log and "loginTunnelId" in log for log in logs)


def test_a_password_login_opens_the_tcp_port_on_both_gateways_until_sessions_are_revoked(deployment):
    d = deployment
    web = d.tunnel("web.localhost", "echo", access={"mode": "password", "password": PASSWORD})
    tcp = port_tunnel(d, "tcp", d.apps["echo"], access={"loginTunnelId": web["id"], "loginGrantMinutes": 1})
    d.port = tcp["publicPort"]
    wait_for(lambda: refused_for_login(d, tcp["id"]), 60, "both gateways to refuse the port before a login")
    assert not any(echoes(d.port, host=host) for host in HOSTS)

    login = httpx.post(d.url("gw1", "/.kakuremichi/login"), headers={"host": "web.localhost"},
                       data={"password": PASSWORD, "next": "/"}, timeout=10)
    assert login.status_code == 303 and "kakuremichi_session" in login.cookies
    wait_for(lambda: all(echoes(d.port, host=host) for host in HOSTS), 30, "the port open on both gateways")
    grants = d.api.get(f"/api/tunnels/{tcp['id']}").json()["access"]["grants"]
    assert [grant["address"] for grant in grants] == ["127.0.0.1"]

    revoked = d.api.post(f"/api/tunnels/{web['id']}/revoke-sessions", json={})
    assert revoked.status_code == 200, revoked.text
    wait_for(lambda: all(reset(host, d.port) for host in HOSTS), 30, "the port closed again on both gateways")
    assert d.api.get(f"/api/tunnels/{tcp['id']}").json()["access"]["grants"] == []


def udp_answered(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.settimeout(1)
        client.sendto(b"hello", ("127.0.0.1", port))
        try:
            return client.recv(100) == b"hello"
        except OSError:
            return False


def test_a_udp_port_drops_datagrams_until_a_login(deployment):
    d = deployment
    web = d.tunnel("web.localhost", "echo", access={"mode": "password", "password": PASSWORD})
    bypass = {"loginTunnelId": web["id"], "rules": [{"action": "bypass", "cidr": "127.0.0.0/8"}]}
    udp = port_tunnel(d, "udp", d.apps["udp_echo"], access=bypass)
    wait_for(lambda: udp_answered(udp["publicPort"]), 60, "the udp tunnel to carry a client its rule lets in")
    patched = d.api.patch(f"/api/tunnels/{udp['id']}", json={"access": {"loginTunnelId": web["id"]}})
    assert patched.status_code == 200, patched.text
    wait_for(lambda: not udp_answered(udp["publicPort"]), 30, "the port to drop a client without a login")
    assert not udp_answered(udp["publicPort"])
    login = httpx.post(d.url("gw1", "/.kakuremichi/login"), headers={"host": "web.localhost"},
                       data={"password": PASSWORD}, timeout=10)
    assert login.status_code == 303
    wait_for(lambda: udp_answered(udp["publicPort"]), 30, "the udp port to carry the logged-in client")
