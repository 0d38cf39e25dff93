"""Metrics and `kakuremichi status` of real processes: control, a gateway and an agent started from their
command lines with --metrics-listen, requests through the tunnel, and what Prometheus and the CLI then see."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.deployment import ADMIN, Deployment, child_env, free_port, free_ports, wait_for

TOKEN = "scrape-" + "0123456789abcdef"
DOMAIN = "app.example.test"

APP = textwrap.dedent('''
    import sys
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        def log_message(self, *args): pass
        def do_GET(self):  # /<status>/<size>: that status with a body of that size; /close/<size>: 200, then close
            _, status, size = self.path.split("/")
            self.send_response(200 if status == "close" else int(status))
            if status == "close":
                self.send_header("connection", "close")
            self.send_header("content-length", size)
            self.end_headers()
            self.wfile.write(b"x" * int(size))
        def do_POST(self):
            self.rfile.read(int(self.headers["content-length"]))
            self.send_response(201)
            self.send_header("content-length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

    server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
    print("ready", flush=True)
    server.serve_forever()
''')


@pytest.fixture
def deployment(tmp_path):
    token_file = tmp_path / "metrics.token"
    token_file.write_text(TOKEN + "\n")
    gateway_port, agent_port = free_port(), free_port()
    d = Deployment(tmp_path, apps={"app": ("-c", APP)}, gateways=("gw1",),
                   gateway_args=("--metrics-listen", f"127.0.0.1:{gateway_port}", "--metrics-token-file",
                                 str(token_file)),
                   agent_args=("--metrics-listen", f"127.0.0.1:{agent_port}"))
    d.gateway_metrics, d.agent_metrics = f"http://127.0.0.1:{gateway_port}", f"http://127.0.0.1:{agent_port}"
    try:
        yield d
    finally:
        d.close()


def scrape(url: str, token: str | None = None) -> dict[tuple[str, frozenset], float]:
    """Every sample at `url`/metrics, by name and labels."""
    response = httpx.get(f"{url}/metrics", headers={"authorization": f"Bearer {token}"} if token else {}, timeout=5)
    assert response.status_code == 200, response.text
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(response.text) for sample in family.samples}


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def serving(d: Deployment) -> None:
    wait_for(lambda: (r := d.get("gw1", DOMAIN, "/200/1")) is not None and r.status_code == 200, 20, "the tunnel")


def status_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kakuremichi", "status", *args], env=child_env(),
                          capture_output=True, text=True, timeout=30)


def test_the_gateway_counts_each_tunnels_requests_by_status_class_and_bytes(deployment):
    tunnel = deployment.tunnel(DOMAIN, "app")
    serving(deployment)
    labels = {"tunnel": tunnel["id"], "domain": DOMAIN}
    before = scrape(deployment.gateway_metrics, TOKEN)
    for _ in range(3):
        assert deployment.get("gw1", DOMAIN, "/200/1000").status_code == 200
    for _ in range(2):
        assert deployment.get("gw1", DOMAIN, "/404/10").status_code == 404
    posted = httpx.post(deployment.url("gw1", "/"), headers={"host": DOMAIN}, content=b"y" * 500, timeout=5)
    assert posted.status_code == 201
    assert deployment.get("gw1", "nowhere.example.test").status_code == 404  # no tunnel: not this tunnel's
    after = scrape(deployment.gateway_metrics, TOKEN)

    def delta(name: str, **extra: str) -> float:
        return value(after, name, **labels, **extra) - value(before, name, **labels, **extra)

    assert delta("kakuremichi_gateway_requests_total", status="2xx") == 4
    assert delta("kakuremichi_gateway_requests_total", status="4xx") == 2
    assert delta("kakuremichi_gateway_requests_total", status="5xx") == 0
    assert delta("kakuremichi_gateway_response_bytes_total") == 3 * 1000 + 2 * 10 + 2
    assert delta("kakuremichi_gateway_request_bytes_total") == 500
    assert delta("kakuremichi_gateway_request_duration_seconds_count") == 6
    assert delta("kakuremichi_gateway_request_duration_seconds_bucket", le="+Inf") == 6
    assert value(after, "kakuremichi_gateway_requests_total", tunnel="", domain="", status="4xx") >= 1
    assert value(after, "kakuremichi_gateway_active_requests", **labels) == 0
    # the agent is the gateway's WireGuard peer: a handshake was completed moments ago, traffic both ways
    agent_key = deployment.api.get("/api/agents").json()["items"][0]["publicKey"]
    age = after[("kakuremichi_wireguard_peer_last_handshake_age_seconds", frozenset({("peer", agent_key)}))]
    assert 0 <= age < 180
    assert value(after, "kakuremichi_wireguard_peer_received_bytes_total", peer=agent_key) > 3000
    assert value(after, "kakuremichi_wireguard_peer_session", peer=agent_key) == 1
    assert value(after, "kakuremichi_control_connected", role="gateway") == 1
    # a datagram that is no WireGuard message is dropped and counted by reason
    host, port = deployment.api.get("/api/gateways").json()["items"][0]["publicEndpoint"].rsplit(":", 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.sendto(b"not wireguard", (host, int(port)))
    wait_for(lambda: value(scrape(deployment.gateway_metrics, TOKEN), "kakuremichi_wireguard_dropped_total",
                           reason="malformed") == 1, 10, "the malformed datagram counted")
    text = httpx.get(f"{deployment.gateway_metrics}/metrics", headers={"authorization": f"Bearer {TOKEN}"}).text
    assert "# TYPE kakuremichi_netstack_dropped_total counter" in text
    assert "# TYPE kakuremichi_faults_total counter" in text


def listening(url: str) -> bool:
    try:
        return httpx.get(url, timeout=5) is not None
    except httpx.TransportError:
        return False


def test_the_metrics_token_is_required_when_set(deployment):
    wait_for(lambda: listening(deployment.gateway_metrics), 20, "the gateway's metrics listener")
    for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": TOKEN}):
        for path in ("/metrics", "/status"):
            response = httpx.get(deployment.gateway_metrics + path, headers=headers, timeout=5)
            assert response.status_code == 401, (headers, path)
            assert response.headers["www-authenticate"] == "Bearer"
            assert "kakuremichi_" not in response.text
    # the agent was started without one
    wait_for(lambda: listening(deployment.agent_metrics), 20, "the agent's metrics listener")
    assert httpx.get(deployment.agent_metrics + "/metrics", timeout=5).status_code == 200
    # garbage, an oversized head, a request cut short: that connection is closed, the listener goes on
    host, port = deployment.agent_metrics.removeprefix("http://").split(":")
    for sent in (b"\x16\x03\x01garbage\r\n\r\n", b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 100_000, b"GET /met"):
        with socket.create_connection((host, int(port)), timeout=15) as probe:
            try:
                probe.sendall(sent)
                probe.shutdown(socket.SHUT_WR)
                while probe.recv(65536):
                    pass
            except OSError:
                pass  # closed before all was sent (reset, broken pipe, not connected any more): what it should do
    samples = scrape(deployment.agent_metrics)
    assert ("kakuremichi_control_connected", frozenset({("role", "agent")})) in samples


def test_the_agent_counts_connections_per_tunnel(deployment):
    deployment.tunnel(DOMAIN, "app")
    serving(deployment)
    samples = scrape(deployment.agent_metrics)  # the gateway keeps the connection it served with for the next
    assert value(samples, "kakuremichi_agent_connections_total", domain=DOMAIN) >= 1
    assert value(samples, "kakuremichi_agent_active_connections", domain=DOMAIN) >= 1
    before = value(samples, "kakuremichi_agent_target_received_bytes_total", domain=DOMAIN)
    assert deployment.get("gw1", DOMAIN, "/close/100").status_code == 200  # the app closes that one
    wait_for(lambda: value(scrape(deployment.agent_metrics), "kakuremichi_agent_target_received_bytes_total",
                           domain=DOMAIN) >= before + 100, 10, "the closed connection's bytes")
    samples = scrape(deployment.agent_metrics)
    assert value(samples, "kakuremichi_agent_target_sent_bytes_total", domain=DOMAIN) > 0
    assert value(samples, "kakuremichi_control_connected", role="agent") == 1
    gateway_key = deployment.api.get("/api/gateways").json()["items"][0]["publicKey"]
    assert ("kakuremichi_wireguard_peer_last_handshake_age_seconds", frozenset({("peer", gateway_key)})) in samples


def test_controls_metrics_count_agents_and_gateways_online(deployment):
    serving_peers = lambda: deployment.api.get("/api/gateways").json()["items"][0]["status"] == "online"  # noqa: E731
    wait_for(serving_peers, 10, "the gateway online")
    assert httpx.get(f"http://127.0.0.1:{deployment.control_port}/metrics", timeout=5).status_code == 401
    samples = scrape(f"http://127.0.0.1:{deployment.control_port}", ADMIN)
    assert value(samples, "kakuremichi_control_clients", role="agent", status="online") == 1
    assert value(samples, "kakuremichi_control_clients", role="gateway", status="online") == 1
    assert value(samples, "kakuremichi_control_clients_connected", role="gateway") == 1
    assert value(samples, "kakuremichi_control_config_pushes_total", role="agent") >= 1


def test_status_shows_the_control_link_peers_and_tunnels_of_the_agent_and_the_gateway(deployment):
    deployment.tunnel(DOMAIN, "app")
    serving(deployment)
    agent_key = deployment.api.get("/api/agents").json()["items"][0]["publicKey"]
    gateway_key = deployment.api.get("/api/gateways").json()["items"][0]["publicKey"]
    agent_dir, gateway_dir = deployment.tmp / "agent", deployment.tmp / "gw1"
    assert stat.S_IMODE(os.stat(agent_dir / "status.sock").st_mode) == 0o600

    shown = status_cli("--data-dir", str(agent_dir), "--json")
    assert shown.returncode == 0, shown.stderr
    agent = json.loads(shown.stdout)
    assert agent["role"] == "agent" and agent["control"]["connected"] is True
    assert agent["publicKey"] == agent_key
    assert [(p["publicKey"], p["session"]) for p in agent["peers"]] == [(gateway_key, True)]
    assert agent["peers"][0]["lastHandshake"] is not None and agent["peers"][0]["endpoint"]
    assert [t["domain"] for t in agent["tunnels"]] == [DOMAIN]

    text = status_cli("--data-dir", str(gateway_dir))
    assert text.returncode == 0, text.stderr
    assert "control" in text.stdout and ": connected" in text.stdout
    assert agent_key in text.stdout and "session" in text.stdout and DOMAIN in text.stdout

    over_http = status_cli("--metrics-url", deployment.gateway_metrics, "--json", "--metrics-token-file",
                           str(deployment.tmp / "metrics.token"))
    assert over_http.returncode == 0, over_http.stderr
    assert json.loads(over_http.stdout)["tunnels"][0]["domain"] == DOMAIN
    refused = status_cli("--metrics-url", deployment.gateway_metrics)
    assert refused.returncode == 1 and "token" in refused.stderr

    # a tunnel whose target is down: the agent's status shows its warning
    response = deployment.api.post("/api/tunnels", json={"domain": "down.example.test", "agentId": deployment.agent_id,
                                                         "target": f"127.0.0.1:{free_port()}", "tlsMode": "off"})
    assert response.status_code == 201, response.text
    wait_for(lambda: (r := deployment.get("gw1", "down.example.test")) is not None and r.status_code == 502, 20,
             "the 502 of a target that is down")
    text = status_cli("--data-dir", str(agent_dir))
    assert "warning: local target unreachable" in text.stdout, text.stdout
    problems = json.loads(status_cli("--data-dir", str(agent_dir), "--json").stdout)["problems"]
    assert any(p["message"] == "local target unreachable" and p["domain"] == "down.example.test" for p in problems)

    missing = status_cli("--data-dir", str(deployment.tmp / "nothing-here"))
    assert missing.returncode == 1 and "--data-dir" in missing.stderr


def test_each_gateway_worker_has_its_own_metrics_port_and_status_socket(tmp_path):
    """... and the metrics token, given to the supervisor in a file, reaches the workers without showing on
    their command lines."""
    first = free_ports(2)
    token = "worker-metrics-token-" + "x" * 20
    (tmp_path / "metrics.token").write_text(token)
    d = Deployment(tmp_path, apps={"app": ("-c", APP)}, gateways=("gw1",), workers=2,
                   gateway_args=("--metrics-listen", f"127.0.0.1:{first}",
                                 "--metrics-token-file", str(tmp_path / "metrics.token")))
    try:
        d.tunnel(DOMAIN, "app")
        serving(d)
        def connected(index: int) -> bool:
            try:
                samples = scrape(f"http://127.0.0.1:{first + index}", token)
            except httpx.ConnectError:  # serving(d) saw one worker: the other may still be starting
                return False
            return value(samples, "kakuremichi_control_connected", role="gateway") == 1

        for index in (0, 1):
            wait_for(lambda: connected(index), 20, f"worker {index} connected")
            assert httpx.get(f"http://127.0.0.1:{first + index}/metrics", timeout=5).status_code == 401
        for pid in d.worker_pids("gw1").values():
            assert token.encode() not in Path(f"/proc/{pid}/cmdline").read_bytes()
        shown = status_cli("--data-dir", str(tmp_path / "gw1"), "--json")
        assert shown.returncode == 0, shown.stderr
        workers = [json.loads(line) for line in shown.stdout.splitlines()]
        assert [w["worker"] for w in workers] == [0, 1]
        assert len({w["publicKey"] for w in workers}) == 2  # each worker is a WireGuard peer of its own
        assert all(w["control"]["connected"] and w["tunnels"][0]["domain"] == DOMAIN for w in workers)
    finally:
        d.close()
