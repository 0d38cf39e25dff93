"""An agent that goes away, as separate processes: killed mid-response, the client's exchange (HTTP/1.1: its
connection, HTTP/2: its stream) ends within seconds, not after the upstream timeout; stopped cleanly, the
next request is a 502 naming it offline."""

from __future__ import annotations

import signal
import socket

import httpx
import pytest

from tests.deployment import Deployment, wait_for
from tests.e2e.test_tunnel_end_to_end import APP, serves

MB = 1024 * 1024
CLIENT_TIMEOUT = 20.0  # the gateway's upstream timeout is 60 s: a wait this long would be that one's


@pytest.fixture
def deployment(tmp_path):
    d = Deployment(tmp_path, apps={"one": ("-c", APP)}, gateways=("gw1",))
    try:
        d.tunnel("app.example.test", "one")
        wait_for(lambda: serves(d, "gw1", "app.example.test", "one"), 20, "the tunnel")
        yield d
    finally:
        d.close()


def test_an_agent_killed_mid_response_ends_the_clients_exchange(deployment):
    size = 64 * MB  # far more than the buffers on the way hold once the client has read 4 MB
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)  # the client, not its kernel, sets the pace
    sock.settimeout(CLIENT_TIMEOUT)
    with sock:
        sock.connect(("127.0.0.1", deployment.gateways["gw1"][1]))
        sock.sendall(b"GET /bytes/%d HTTP/1.1\r\nHost: app.example.test\r\n\r\n" % size)
        received = 0
        while received < 4 * MB:
            received += len(sock.recv(1 << 16))
        deployment.agent.popen.send_signal(signal.SIGKILL)
        deployment.agent.popen.wait()
        try:
            while data := sock.recv(1 << 16):  # socket.timeout here: the gateway kept the client waiting
                received += len(data)
        except ConnectionResetError:
            pass
    assert received < size  # the exchange ended, cut short, without the client having to time out


def test_an_agent_killed_mid_response_resets_the_clients_http2_stream(tmp_path):
    d = Deployment(tmp_path, apps={"one": ("-c", APP)}, gateways=("gw1",), https=True)
    try:
        d.tunnel("app.example.test", "one", tlsMode="self-signed")
        url = f"https://127.0.0.1:{d.https_ports['gw1']}/bytes/{64 * MB}"
        with httpx.Client(http2=True, verify=False, headers={"host": "app.example.test"},
                          timeout=CLIENT_TIMEOUT) as client:
            def serving() -> bool:
                try:
                    return client.get(url.rsplit("/", 1)[0] + "/1").status_code == 200
                except httpx.TransportError:
                    return False

            wait_for(serving, 30, "the tunnel over HTTPS")
            received = 0
            with pytest.raises(httpx.RemoteProtocolError), client.stream("GET", url) as response:
                assert response.http_version == "HTTP/2"
                for chunk in response.iter_bytes():  # httpx.ReadTimeout here: the gateway kept it waiting
                    received += len(chunk)
                    if received >= 4 * MB and d.agent.popen.poll() is None:
                        d.agent.popen.send_signal(signal.SIGKILL)
                        d.agent.popen.wait()
            assert 4 * MB <= received < 64 * MB
    finally:
        d.close()


def config_applications(deployment: Deployment) -> int:
    return (deployment.tmp / "gatewaygw1.log").read_text().count("config applied")


def test_an_agent_stopped_cleanly_gets_an_immediate_502_naming_it_offline(deployment):
    applied = config_applications(deployment)
    deployment.agent.popen.send_signal(signal.SIGTERM)
    assert deployment.agent.popen.wait(20) == 0
    wait_for(lambda: config_applications(deployment) > applied, 10, "control to tell the gateway")
    response = httpx.get(deployment.url("gw1"), headers={"host": "app.example.test", "accept": "application/json"},
                         timeout=CLIENT_TIMEOUT)
    assert response.status_code == 502  # at once: not a 504 after the connect timeout
    assert response.json()["code"] == "agent_offline"
    assert "app.example.test has been stopped" in response.json()["details"]
    deployment.agent.start()
    wait_for(lambda: serves(deployment, "gw1", "app.example.test", "one"), 30, "the agent to be back")
