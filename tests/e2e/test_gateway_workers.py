"""A gateway run with --workers 2, as separate processes: both workers register with control and serve, over
WireGuard peerings of their own with the agent, the one certificate; one killed loses only its own connections
and comes back; SIGTERM to the gateway stops them all."""

from __future__ import annotations

import hashlib
import os
import re
import signal
import socket
import ssl
from pathlib import Path

import pytest
import trio

from kakuremichi.gateway.workers import SHARED_PORTS
from tests.deployment import Deployment, free_port, wait_for
from tests.e2e.test_tunnel_end_to_end import APP, serves
from tests.gateway.pebble import Pebble, needs_pebble

pytestmark = pytest.mark.skipif(not SHARED_PORTS, reason="this OS cannot spread a port's connections among processes: "
                                                                 "the gateway runs one worker")

DOMAIN = "app.example.test"
CONNECTIONS = 40  # the kernel spreads each connection to either worker: all to one has a chance of 2^-39


@pytest.fixture
def deployment(tmp_path):
    d = Deployment(tmp_path, apps={"one": ("-c", APP)}, gateways=("gw",), workers=2, https=True)
    try:
        d.tunnel(DOMAIN, "one", tlsMode="self-signed")
        wait_for(lambda: serves(d, "gw", DOMAIN, "one") and len(served_by(d)) == 2, 30, "both workers to serve")
        yield d
    finally:
        d.close()


def log_of(d: Deployment) -> Path:
    return d.tmp / "gatewaygw.log"


def served_by(d: Deployment, path: str = "/", status: int | None = None) -> dict[str, int]:
    """How many requests for `path` each worker logged (with `status`, those answered so only)."""
    counts: dict[str, int] = {}
    for line in log_of(d).read_text(errors="replace").splitlines():
        if ("kakuremichi.gateway.access request" in line and f" path={path} " in line
                and (status is None or f" status={status} " in line)):
            worker = re.search(r" worker=(\d+)", line).group(1)
            counts[worker] = counts.get(worker, 0) + 1
    return counts


def request(connection: socket.socket, path: str = "/") -> bytes:
    """One GET on an open connection: its response head and body (the app answers a few hundred bytes)."""
    connection.sendall(f"GET {path} HTTP/1.1\r\nHost: {DOMAIN}\r\n\r\n".encode())
    response = b""
    while b"\r\n\r\n" not in response or len(response.split(b"\r\n\r\n", 1)[1]) < int(
            re.search(rb"(?i)content-length: *(\d+)", response).group(1)):
        data = connection.recv(65536)
        if not data:
            raise ConnectionResetError("closed")
        response += data
    return response


def status(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


def open_connections(d: Deployment) -> list[socket.socket]:
    return [socket.create_connection(("127.0.0.1", d.gateways["gw"][1]), timeout=10) for _ in range(CONNECTIONS)]


def fingerprints_over_https(d: Deployment, context: ssl.SSLContext, path: str) -> set[str]:
    """The certificates served on CONNECTIONS new HTTPS connections, each of which GETs `path`."""
    fingerprints = set()
    for _ in range(CONNECTIONS):
        with context.wrap_socket(socket.create_connection(("127.0.0.1", d.https_ports["gw"]), timeout=10),
                                 server_hostname=DOMAIN) as tls:
            fingerprints.add(hashlib.sha256(tls.getpeercert(binary_form=True)).hexdigest())
            assert status(request(tls, path)) == 200
    wait_for(lambda: sum(served_by(d, path).values()) == CONNECTIONS, 5, "the access lines")
    assert set(served_by(d, path)) == {"0", "1"}
    return fingerprints


def test_both_workers_register_peer_with_the_agent_and_serve_one_certificate(deployment):
    gateways = deployment.api.get("/api/gateways").json()
    assert gateways["total"] == 1  # one gateway, listed with its worker
    (gateway,) = gateways["items"]
    (worker,) = gateway["workers"]
    assert worker["index"] == 1 and worker["status"] == "online" and worker["publicKey"] != gateway["publicKey"]
    assert worker["publicEndpoint"] == f"127.0.0.1:{int(gateway['publicEndpoint'].rsplit(':', 1)[1]) + 1}"
    tunnel = deployment.api.get("/api/tunnels").json()["items"][0]
    assert set(tunnel["gatewayIps"]) == {gateway["id"], worker["id"]}  # an address in the subnet for each

    connections = open_connections(deployment)
    try:
        assert all(status(request(c, "/http")) == 200 for c in connections)
    finally:
        for c in connections:
            c.close()
    wait_for(lambda: sum(served_by(deployment, "/http").values()) == CONNECTIONS, 5, "the access lines")
    assert set(served_by(deployment, "/http")) == {"0", "1"}  # each worker reached the agent over its own peering

    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    assert len(fingerprints_over_https(deployment, context, "/https")) == 1  # both serve the one self-signed one


@needs_pebble
def test_the_workers_order_one_acme_certificate_together_and_serve_it(tmp_path):
    """Pebble validates through whichever worker the kernel hands its connection to: the challenge the ordering
    worker published reaches the other one through control, as between gateways."""
    http_port = free_port()
    pebble = Pebble(tmp_path, http_port)
    trio.run(pebble.start)
    d = Deployment(tmp_path, apps={"one": ("-c", APP)}, gateways=(), workers=2, https=True,
                   gateway_args=("--acme-directory", pebble.directory_url, "--acme-ca-bundle", str(pebble.ca_bundle)))
    try:
        d.add_gateway("gw", http_port)
        d.tunnel(DOMAIN, "one", tlsMode="acme")
        context = ssl.create_default_context(cadata=trio.run(pebble.root_pem).decode())

        def verified() -> bool:
            try:
                with context.wrap_socket(socket.create_connection(("127.0.0.1", d.https_ports["gw"]), timeout=10),
                                         server_hostname=DOMAIN):
                    return True
            except (ssl.SSLError, OSError):
                return False

        wait_for(lambda: verified() and all(verified() for _ in range(10)), 60, "both workers to serve the certificate")
        assert len(fingerprints_over_https(d, context, "/acme")) == 1
        assert (d.tmp / "controlcontrol.log").read_text().count("certificate uploaded") == 1  # one worker ordered
    finally:
        d.close()
        pebble.stop()


def test_a_killed_worker_loses_only_its_connections_and_is_started_again(deployment):
    before = deployment.worker_pids("gw")
    assert set(before) == {0, 1}
    # as after any time serving: the workers saved where the agent is (endpoints.py); the new worker 1 starts there
    wait_for(lambda: any(deployment.tmp.glob("gw/agent-endpoints*.json")), 15, "an agent address file")
    connections = open_connections(deployment)
    try:
        for c in connections:
            assert status(request(c)) == 200  # accepted, by one worker or the other
        os.kill(before[1], signal.SIGKILL)
        alive = 0
        for c in connections:
            try:
                request(c)
                alive += 1
            except OSError:
                pass
    finally:
        for c in connections:
            c.close()
    assert 0 < alive < CONNECTIONS  # worker 0's connections still work, worker 1's went with it
    wait_for(lambda: deployment.worker_pids("gw").get(1) not in (None, before[1]), 20, "worker 1 to be started again")
    assert deployment.worker_pids("gw")[0] == before[0]

    def served_by_new_worker() -> bool:
        for c in open_connections(deployment):
            with c:
                assert status(request(c, "/after")) in (200, 502)  # 502: worker 1 has not reached the agent yet
        return "1" in served_by(deployment, "/after", status=200)

    wait_for(served_by_new_worker, 30, "the new worker 1 to serve")
    worker = deployment.api.get("/api/gateways").json()["items"][0]["workers"][0]
    assert worker["status"] == "online"  # registered again, with the same key: still one worker
    assert "gateway worker exited, starting it again" in log_of(deployment).read_text()


def test_sigterm_to_the_gateway_stops_every_worker(deployment):
    supervisor = deployment.gateways["gw"][0].popen
    workers = deployment.worker_pids("gw")
    assert len(workers) == 2
    supervisor.send_signal(signal.SIGTERM)
    assert supervisor.wait(20) == 0
    wait_for(lambda: not any(Path(f"/proc/{pid}").exists() for pid in workers.values()), 5, "the workers to exit")
