"""The product end to end, every component a separate process: control, two gateways, an agent, and a
local app that only the agent can reach. Clients go through each gateway by Host."""

from __future__ import annotations

import hashlib
import os
import textwrap
import time

import httpx
import pytest
import trio

from tests.deployment import Deployment, wait_for

MB = 1024 * 1024
BIG = 100 * MB

APP = textwrap.dedent('''
    import hashlib, json, sys
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    health = [200]  # what GET /health answers; GET /set-health/<status> changes it

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        def log_message(self, *args): pass
        def do_GET(self):
            if self.path.startswith("/set-health/") or self.path == "/health":
                if self.path != "/health":
                    health[0] = int(self.path.rsplit("/", 1)[1])
                self.send_response(health[0] if self.path == "/health" else 204)
                self.send_header("content-length", "0")
                self.end_headers()
                return
            if self.path.startswith("/bytes/"):
                size = int(self.path.split("/")[2])
                self.send_response(200)
                self.send_header("content-length", str(size))
                self.end_headers()
                block = bytes(range(256)) * 256
                while size:
                    chunk = block[:min(size, len(block))]
                    self.wfile.write(chunk)
                    size -= len(chunk)
                return
            body = json.dumps({"app": sys.argv[2], "path": self.path,
                               "headers": {k.lower(): v for k, v in self.headers.items()}}).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        def do_POST(self):
            remaining = int(self.headers["content-length"])
            digest = hashlib.sha256()
            while remaining:
                chunk = self.rfile.read(min(remaining, 1 << 16))
                digest.update(chunk)
                remaining -= len(chunk)
            body = digest.hexdigest().encode()
            self.send_response(200)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    class Server(ThreadingHTTPServer):
        request_queue_size = 512  # the stdlib's 5 drops SYNs under 100 concurrent connections
        daemon_threads = True

    server = Server(("127.0.0.1", int(sys.argv[1])), Handler)
    print("ready", flush=True)
    server.serve_forever()
''')


WS_APP = textwrap.dedent("""
    import sys, trio
    from trio_websocket import ConnectionClosed, serve_websocket

    async def echo(request):
        ws = await request.accept()
        try:
            while True:
                await ws.send_message(await ws.get_message())
        except ConnectionClosed:
            pass

    async def main():
        async with trio.open_nursery() as nursery:
            await nursery.start(serve_websocket, echo, "127.0.0.1", int(sys.argv[1]), None)
            print("ready", flush=True)
    trio.run(main)
""")


def serves(deployment: Deployment, gateway: str, domain: str, app: str) -> bool:
    response = deployment.get(gateway, domain)
    return response is not None and response.status_code == 200 and response.json()["app"] == app


@pytest.fixture
def deployment(tmp_path):
    d = Deployment(tmp_path, apps={"one": ("-c", APP), "two": ("-c", APP), "ws": ("-c", WS_APP)})
    try:
        yield d
    finally:
        d.close()


def test_both_gateways_serve_the_tunnel_with_forwarding_headers(deployment):
    deployment.tunnel("app.example.test", "one")
    for gateway in ("gw1", "gw2"):
        wait_for(lambda: serves(deployment, gateway, "app.example.test", "one"), 20, f"{gateway} to serve")
        response = httpx.get(deployment.url(gateway, "/hello?x=1"),
                             headers={"host": "App.Example.Test:80", "x-forwarded-for": "6.6.6.6"})
        seen = response.json()
        assert seen["path"] == "/hello?x=1"
        headers = seen["headers"]
        assert headers["x-forwarded-host"].lower() == "app.example.test:80"  # as the client sent it
        assert headers["x-forwarded-proto"] == "http"
        assert headers["x-forwarded-for"] == "127.0.0.1"  # the spoofed chain from an untrusted client is dropped
        assert headers["x-real-ip"] == "127.0.0.1"
        assert "for=127.0.0.1" in headers["forwarded"] and "proto=http" in headers["forwarded"]
    assert deployment.get("gw1", "unknown.example.test").status_code == 404
    # a tunnel whose agent never connected answers 502 at once instead of hanging
    other = deployment.create("agents", "never-connects")
    deployment.api.post("/api/tunnels", json={"domain": "orphan.example.test", "agentId": other["id"],
                                              "target": "127.0.0.1:9", "tlsMode": "off"})
    wait_for(lambda: deployment.get("gw1", "orphan.example.test").status_code != 404, 5, "the orphan route")
    assert deployment.get("gw1", "orphan.example.test").status_code == 502
    agents = deployment.api.get("/api/agents").json()["items"]
    assert agents[0]["status"] == "online"
    # heartbeats carry the data plane's state to control: tunnels served, gateways peered, handshakes
    def reported() -> dict:
        return deployment.api.get("/api/agents").json()["items"][0]["metadata"].get("stats", {})

    wait_for(lambda: reported().get("tunnels") == 1 and len(reported()["peers"]) == 2
             and all(p["connected"] and p["lastHandshake"] for p in reported()["peers"].values()),
             5, "the agent's status report of both gateways")


def test_100_mb_down_and_up_and_100_concurrent_requests(deployment):
    deployment.tunnel("bulk.example.test", "one")
    wait_for(lambda: serves(deployment, "gw1", "bulk.example.test", "one"), 20, "the tunnel")
    url = deployment.url("gw1", f"/bytes/{BIG}")
    expected = hashlib.sha256((bytes(range(256)) * 256) * (BIG // 65536)).hexdigest()
    digest, size = hashlib.sha256(), 0
    with httpx.stream("GET", url, headers={"host": "bulk.example.test"}, timeout=120) as response:
        assert response.status_code == 200
        for chunk in response.iter_raw():
            digest.update(chunk)
            size += len(chunk)
    assert size == BIG and digest.hexdigest() == expected

    payload = os.urandom(BIG)

    def body():
        for i in range(0, BIG, MB):
            yield payload[i:i + MB]

    response = httpx.post(deployment.url("gw1", "/upload"), headers={"host": "bulk.example.test",
                                                                     "content-length": str(BIG)},
                          content=body(), timeout=120)
    assert response.text == hashlib.sha256(payload).hexdigest()

    async def concurrent() -> list[int]:
        async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=100)) as client:
            statuses: list[int] = []

            async def one(i: int) -> None:
                r = await client.get(deployment.url("gw1", f"/c/{i}"), headers={"host": "bulk.example.test"})
                statuses.append(r.status_code if r.json()["path"] == f"/c/{i}" else -1)

            async with trio.open_nursery() as nursery:
                for i in range(100):
                    nursery.start_soon(one, i)
            return statuses

    statuses = trio.run(concurrent)
    assert statuses == [200] * 100


def test_tunnel_changes_take_effect_within_a_second(deployment):
    tunnel = deployment.tunnel("live.example.test", "one")
    wait_for(lambda: all(serves(deployment, g, "live.example.test", "one") for g in ("gw1", "gw2")), 20,
             "both gateways")
    api, tid = deployment.api, tunnel["id"]

    api.patch(f"/api/tunnels/{tid}", json={"target": f"127.0.0.1:{deployment.apps['two']}"})
    for gateway in ("gw1", "gw2"):
        assert wait_for(lambda: serves(deployment, gateway, "live.example.test", "two"), 2, "re-target") < 1.5

    api.patch(f"/api/tunnels/{tid}", json={"enabled": False})
    assert wait_for(lambda: deployment.get("gw1", "live.example.test").status_code == 404, 2, "disable") < 1.5

    api.patch(f"/api/tunnels/{tid}", json={"enabled": True})
    wait_for(lambda: serves(deployment, "gw1", "live.example.test", "two"), 2, "re-enable")

    api.delete(f"/api/tunnels/{tid}")
    assert wait_for(lambda: deployment.get("gw2", "live.example.test").status_code == 404, 2, "delete") < 1.5


def test_survives_control_gateway_and_agent_restarts(deployment):
    deployment.tunnel("sturdy.example.test", "one")
    wait_for(lambda: all(serves(deployment, g, "sturdy.example.test", "one") for g in ("gw1", "gw2")), 20,
             "both gateways")

    # Control down: the data plane keeps serving on its last config.
    deployment.control.stop()
    for _ in range(10):
        assert serves(deployment, "gw1", "sturdy.example.test", "one")
    deployment.control.start()
    wait_for(deployment._healthy, 15, "control to come back")
    wait_for(lambda: all(c["status"] == "online" for kind in ("agents", "gateways")
                         for c in deployment.api.get(f"/api/{kind}").json()["items"]), 20, "clients to reconnect")
    # ... and resynced: a change made now reaches the data plane.
    deployment.tunnel("later.example.test", "two")
    wait_for(lambda: serves(deployment, "gw2", "later.example.test", "two"), 5, "a post-restart tunnel")

    # A gateway restarts (an upgrade): it reaches the agent at once, not after the agent's next rekey
    # (two minutes), because it remembers where the agent was.
    gw1 = deployment.gateways["gw1"][0]
    time.sleep(6)  # past the gateway's periodic save of agent addresses
    gw1.stop()
    gw1.start()
    assert wait_for(lambda: serves(deployment, "gw1", "sturdy.example.test", "one"), 20, "gw1 after restart") < 8

    # One gateway dies: the other keeps serving.
    gw1.stop()
    assert deployment.get("gw1", "sturdy.example.test") is None
    assert serves(deployment, "gw2", "sturdy.example.test", "one")

    # The agent restarts: tunnels come back by themselves within seconds.
    deployment.agent.stop()
    wait_for(lambda: not serves(deployment, "gw2", "sturdy.example.test", "one"), 5, "the agent to be gone")
    down = httpx.get(deployment.url("gw2"), headers={"host": "sturdy.example.test"}, timeout=30)
    assert down.status_code in (502, 504)  # agent gone: a clear error page once the connect attempt fails
    deployment.agent.start()
    assert wait_for(lambda: serves(deployment, "gw2", "sturdy.example.test", "one"), 15, "the agent") < 10


async def test_websocket_echo_through_the_tunnel(deployment):
    import trio_websocket

    deployment.tunnel("ws.example.test", "ws")
    deployment.tunnel("probe.example.test", "one")
    await trio.to_thread.run_sync(lambda: wait_for(lambda: serves(deployment, "gw2", "probe.example.test", "one"),
                                                   20, "the tunnels"))
    async with trio.open_nursery() as nursery:
        stream = await trio.open_tcp_stream("127.0.0.1", deployment.gateways["gw2"][1])
        ws = await trio_websocket.wrap_client_stream(nursery, stream, "ws.example.test", "/chat")
        for message in ("hello", "through the tunnel", "x" * 100_000):
            await ws.send_message(message)
            assert await ws.get_message() == message
        await ws.aclose()


def test_an_agent_restarted_while_control_is_down_serves_from_its_saved_config(deployment):
    deployment.tunnel("offline.example.test", "one")
    wait_for(lambda: serves(deployment, "gw1", "offline.example.test", "one"), 20, "the tunnel")
    saved = deployment.tmp / "agent" / "config.json"
    assert saved.exists() and saved.stat().st_mode & 0o077 == 0  # it names targets and gateways: owner only
    assert "offline.example.test" in saved.read_text()
    deployment.control.stop()
    deployment.agent.stop()
    deployment.agent.start()
    wait_for(lambda: serves(deployment, "gw1", "offline.example.test", "one"), 20,
             "the restarted agent to serve without control")
    assert "serving the last config saved from control" in deployment.agent.log.read_text()
