"""The exit node end to end: the agent's local SOCKS5 and HTTP proxies send traffic out through a
gateway. A local HTTP server stands for the internet (so the gateways run with --exit-allow-private,
except where the policy itself is tested); the gateway's exit log names the local address its own socket
connected from, which the server reports, so the test knows the connection came from the gateway."""

from __future__ import annotations

import functools
import http.client
import json
import socket
import subprocess
import textwrap

import pytest
import trio

from kakuremichi.agent.agent import Agent
from kakuremichi.egress import socks5
from kakuremichi.egress.localproxy import ProxyListen
from kakuremichi.egress.trio_socks5 import request_connect
from kakuremichi.protocol import EXIT_PORT
from kakuremichi.tunnel import TunnelNode
from kakuremichi.wg import keys
from tests.deployment import Deployment, free_port, wait_for

INTERNET = textwrap.dedent('''
    import json, sys
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        def log_message(self, *args): pass
        def answer(self, body=b""):
            seen = json.dumps({"peer": list(self.client_address), "method": self.command, "path": self.path,
                               "headers": {k.lower(): v for k, v in self.headers.items()},
                               "body": body.decode()}).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(seen)))
            self.end_headers()
            self.wfile.write(seen)
        def do_GET(self):
            self.answer()
        def do_POST(self):
            self.answer(self.rfile.read(int(self.headers["content-length"])))

    class Server(ThreadingHTTPServer):
        daemon_threads = True

    server = Server(("127.0.0.1", int(sys.argv[1])), Handler)
    print("ready", flush=True)
    server.serve_forever()
''')


def curl(*args: str) -> dict | None:
    """What the internet server saw of curl's request, or None when curl failed."""
    done = subprocess.run(["curl", "-sS", "--max-time", "20", *args], capture_output=True, text=True)
    return json.loads(done.stdout) if done.returncode == 0 and done.stdout.startswith("{") else None


def exchange(port: int, request: bytes) -> bytes:
    """Send `request` to a local proxy, half-close, and return everything it answers before closing."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        sock.shutdown(socket.SHUT_WR)
        answer = b""
        try:
            while data := sock.recv(4096):
                answer += data
        except ConnectionResetError:
            pass
        return answer


def get(connection: http.client.HTTPConnection, path: str) -> bytes:
    connection.request("GET", path)
    return connection.getresponse().read()


def exited_through(deployment: Deployment, seen: dict) -> str | None:
    """The gateway whose exit made the connection the server saw, from that gateway's exit log line."""
    via = f"via=127.0.0.1:{seen['peer'][1]}"
    for name in deployment.gateways:
        text = (deployment.tmp / f"gateway{name}.log").read_text()
        if any("exit connection" in line and via in line for line in text.splitlines()):
            return name
    return None


@pytest.fixture
def ports():
    return {"socks": free_port(), "http": free_port()}


@pytest.fixture
def deployment(tmp_path, ports):
    d = Deployment(tmp_path, apps={"internet": ("-c", INTERNET)}, gateway_args=("--exit-allow-private",),
                   agent_args=("--socks-listen", f"127.0.0.1:{ports['socks']}",
                               "--http-proxy-listen", f"127.0.0.1:{ports['http']}"))
    try:
        yield d
    finally:
        d.close()


def test_socks5_and_http_proxies_leave_through_a_gateway(deployment, ports):
    tunnel = deployment.tunnel("exit.example.test", "internet", socksProxyEnabled=True, httpProxyEnabled=True)
    app = deployment.apps["internet"]
    socks = ("--socks5-hostname", f"127.0.0.1:{ports['socks']}")
    wait_for(lambda: curl(*socks, f"http://127.0.0.1:{app}/") is not None, 30, "the SOCKS5 proxy to work")

    # SOCKS5 with the name resolved by the gateway
    seen = curl(*socks, f"http://localhost:{app}/via-socks")
    assert seen["path"] == "/via-socks"
    wait_for(lambda: exited_through(deployment, seen) is not None, 5, "the gateway's exit log line")

    # a plain http:// request through the HTTP proxy: passed on in origin form, with its body, as one request
    proxy = ("-x", f"http://127.0.0.1:{ports['http']}")
    seen = curl(*proxy, "-H", "Proxy-Authorization: Basic c2VjcmV0", "-d", "payload",
                f"http://127.0.0.1:{app}/plain?q=1")
    assert (seen["method"], seen["path"], seen["body"]) == ("POST", "/plain?q=1", "payload")
    assert seen["headers"]["host"] == f"127.0.0.1:{app}" and seen["headers"]["connection"] == "close"
    assert "proxy-authorization" not in seen["headers"] and "proxy-connection" not in seen["headers"]
    wait_for(lambda: exited_through(deployment, seen) is not None, 5, "the gateway's exit log line")

    # CONNECT through the HTTP proxy: a tunnel, and the request inside it is the client's own
    seen = curl(*proxy, "--proxytunnel", f"http://127.0.0.1:{app}/tunnelled")
    assert seen["path"] == "/tunnelled" and "proxy-connection" not in seen["headers"]
    wait_for(lambda: exited_through(deployment, seen) is not None, 5, "the gateway's exit log line")

    # hostile or broken local clients get their error and break nothing
    for request, answer in [(b"\x04\x01\x00\x50\x7f\x00\x00\x01\x00", b"\x05\xff"),
                            (b"\x05\x01\x00\x05\x02\x00\x01\x7f\x00\x00\x01\x00\x50", b"\x05\x00\x05\x07"),
                            (b"\x05\x01\x00\x05\x01\x00\x03\x00\x00\x50", b"\x05\x00\x05\x01"),
                            (b"\x05\x01", b"")]:
        assert exchange(ports["socks"], request)[:len(answer) or None] == answer
    for request in [b"GET http://127.0.0.1:%d/\xff HTTP/1.1\r\nHost: x\r\n\r\n" % app,
                    b"CONNECT nowhere HTTP/1.1\r\nHost: x\r\n\r\n", b"\x00\x01\x02\r\n\r\n",
                    b"GET http://[::1/ HTTP/1.1\r\nHost: x\r\n\r\n",
                    b"GET https://127.0.0.1:%d/ HTTP/1.1\r\nHost: x\r\n\r\n" % app]:
        assert exchange(ports["http"], request).startswith(b"HTTP/1.1 400 "), request
    exchange(ports["http"], b"POST http://127.0.0.1:%d/ HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n"
             b"only ten b" % app)
    closed = free_port()  # nothing listens there: the gateway's connect is refused (0x05, HTTP 502)
    assert exchange(ports["socks"], b"\x05\x01\x00\x05\x01\x00\x01\x7f\x00\x00\x01" + closed.to_bytes(2, "big")
                    )[:4] == b"\x05\x00\x05\x05"
    assert exchange(ports["http"], b"GET http://127.0.0.1:%d/ HTTP/1.1\r\nHost: x\r\n\r\n" % closed
                    ).startswith(b"HTTP/1.1 502 ")
    assert curl(*socks, f"http://127.0.0.1:{app}/still")["path"] == "/still"
    assert curl(*proxy, f"http://127.0.0.1:{app}/still")["path"] == "/still"

    # a live proxied connection outlives a config push that does not concern it
    with socket.create_connection(("127.0.0.1", ports["socks"]), timeout=10) as sock:
        sock.sendall(b"\x05\x01\x00\x05\x01\x00\x01\x7f\x00\x00\x01" + app.to_bytes(2, "big"))
        assert sock.recv(2) == b"\x05\x00" and sock.recv(10)[:2] == b"\x05\x00"
        connection = http.client.HTTPConnection("127.0.0.1", app)
        connection.sock = sock
        assert json.loads(get(connection, "/before"))["path"] == "/before"
        agent_log = deployment.tmp / "agentagent.log"
        applied = agent_log.read_text().count("config applied")
        deployment.tunnel("unrelated.example.test", "internet")
        wait_for(lambda: agent_log.read_text().count("config applied") > applied, 10, "the config push")
        assert json.loads(get(connection, "/after"))["path"] == "/after"

    # the HTTP proxy is no web server, and says so
    done = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}",
                           f"http://127.0.0.1:{ports['http']}/"], capture_output=True, text=True)
    assert done.stdout == "400"

    # the exit turned off: its live connections end at the gateway, and the local proxies stop listening
    with socket.create_connection(("127.0.0.1", ports["socks"]), timeout=10) as sock:
        sock.sendall(b"\x05\x01\x00\x05\x01\x00\x01\x7f\x00\x00\x01" + app.to_bytes(2, "big"))
        assert sock.recv(2) == b"\x05\x00" and sock.recv(10)[:2] == b"\x05\x00"
        deployment.api.patch(f"/api/tunnels/{tunnel['id']}", json={"socksProxyEnabled": False,
                                                                   "httpProxyEnabled": False})
        try:
            assert sock.recv(1) == b""
        except ConnectionResetError:
            pass
    for port in ports.values():
        wait_for(lambda: subprocess.run(["curl", "-s", "-x", f"http://127.0.0.1:{port}", "http://a.test/"]
                                        ).returncode == 7, 10, "the local proxies to stop")  # 7: nothing listens
    wait_for(lambda: any("closed_by_config=True" in (deployment.tmp / f"gateway{name}.log").read_text()
                         for name in deployment.gateways), 5, "the exit's log line of the connection it ended")
    assert all(process.popen.poll() is None for process, _port in deployment.gateways.values())
    assert deployment.agent.popen.poll() is None


def test_new_connections_fail_over_to_the_other_gateway(deployment, ports):
    deployment.tunnel("exit.example.test", "internet", socksProxyEnabled=True)
    url = f"http://127.0.0.1:{deployment.apps['internet']}/"
    socks = ("--socks5-hostname", f"127.0.0.1:{ports['socks']}")
    wait_for(lambda: curl(*socks, url) is not None, 30, "the SOCKS5 proxy to work")
    seen = curl(*socks, url)
    wait_for(lambda: exited_through(deployment, seen) is not None, 5, "the gateway's exit log line")
    used = exited_through(deployment, seen)
    other = next(name for name in deployment.gateways if name != used)

    deployment.gateways[used][0].stop()
    seen = curl(*socks, url)  # the first connection after finds the gateway gone and tries the other
    assert seen is not None
    wait_for(lambda: exited_through(deployment, seen) == other, 5, "the other gateway's exit log line")
    seen = curl(*socks, url)
    wait_for(lambda: exited_through(deployment, seen) == other, 5, "the other gateway's exit log line")
    assert "exit gateway did not answer; trying the next" in (deployment.tmp / "agentagent.log").read_text()


def test_policy_and_tunnels_without_the_exit(tmp_path):
    """An in-process agent, so the test can also speak from its tunnel addresses directly; the gateway
    keeps the default policy."""
    d = Deployment(tmp_path, apps={"internet": ("-c", INTERNET)}, gateways=("gw1",), agent=False)
    try:
        created = d.create("agents", "in-process")
        out = d.tunnel("out.example.test", "internet", agent_id=created["id"])
        plain = d.tunnel("plain.example.test", "internet", agent_id=created["id"])
        trio.run(_policy_and_tunnels_without_the_exit, d, created, out, plain)
    finally:
        d.close()


async def _policy_and_tunnels_without_the_exit(d: Deployment, created: dict, out: dict, plain: dict) -> None:
    socks_port, http_port = free_port(), free_port()
    node = TunnelNode(keys.generate_private(), listen_host="127.0.0.1")
    agent = Agent(node, proxies=ProxyListen(socks=("127.0.0.1", socks_port), http=("127.0.0.1", http_port)))
    client = agent.control_client(d.ws_url, created["apiKey"], heartbeat=1.0)
    app = d.apps["internet"]

    async def wait(condition, what: str) -> None:
        with trio.move_on_after(20):
            while not condition():
                await trio.sleep(0.05)
            return
        raise AssertionError(f"timed out waiting for {what}")

    async def socks_reply(port: int) -> bytes:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(b"\x05\x01\x00\x05\x01\x00\x01\x7f\x00\x00\x01" + app.to_bytes(2, "big"))
            reply = b""
            with trio.fail_after(10):
                while len(reply) < 12 and (data := await stream.receive_some(64)):
                    reply += data
            return reply

    async with trio.open_nursery() as nursery:
        await nursery.start(agent.run)
        await nursery.start(client.run)
        await wait(lambda: len(agent.targets) == 2 and node.device.peers, "the agent's config")

        # no tunnel has the exit on: nothing listens locally
        assert agent.proxies.ports == {}
        with pytest.raises(OSError):
            await trio.open_tcp_stream("127.0.0.1", socks_port)

        d.api.patch(f"/api/tunnels/{out['id']}", json={"socksProxyEnabled": True, "httpProxyEnabled": True})
        await wait(lambda: set(agent.proxies.ports) == {"socks", "http"}, "the local proxies")

        # the default policy: the gateway's own loopback is not reachable through its exit (reply 0x02)
        reply = await socks_reply(socks_port)
        assert reply[:2] == b"\x05\x00" and reply[2:4] == bytes((5, socks5.NOT_ALLOWED)), reply
        await wait(lambda: "exit connection refused" in (d.tmp / "gatewaygw1.log").read_text(), "its log line")
        done = await trio.to_thread.run_sync(functools.partial(
            subprocess.run, ["curl", "-sS", "--max-time", "20", "-o", "/dev/null", "-w", "%{http_code}",
                             "-x", f"http://127.0.0.1:{http_port}", f"http://127.0.0.1:{app}/"],
            capture_output=True, text=True))
        assert done.stdout == "403"

        # the tunnel without the exit cannot use the gateway's exit port directly: the connection is reset
        # before any SOCKS5 answer; nor can the exit tunnel's address use another tunnel's gateway address
        for source, gateway_ip in ((plain["agentIp"], next(iter(plain["gatewayIps"].values()))),
                                   (out["agentIp"], next(iter(plain["gatewayIps"].values())))):
            with trio.fail_after(15), pytest.raises((trio.BrokenResourceError, ConnectionResetError)):
                stream = await node.stack.open_tcp_stream(gateway_ip, EXIT_PORT, local_address=source)
                await request_connect(stream, "127.0.0.1", app)  # the reset may come before or after this
        await wait(lambda: (d.tmp / "gatewaygw1.log").read_text().count("exit refused: no exit tunnel") == 2,
                   "the refusals' log lines")
        # the exit tunnel itself still gets its SOCKS5 answer directly
        stream = await node.stack.open_tcp_stream(next(iter(out["gatewayIps"].values())), EXIT_PORT,
                                                  local_address=out["agentIp"])
        event, _ = await request_connect(stream, "127.0.0.1", app)
        assert event == socks5.Failed(socks5.NOT_ALLOWED, "not allowed by ruleset")

        # turned off again: the listener goes away
        d.api.patch(f"/api/tunnels/{out['id']}", json={"socksProxyEnabled": False, "httpProxyEnabled": False})
        await wait(lambda: agent.proxies.ports == {}, "the local proxies to stop")
        with pytest.raises(OSError):
            await trio.open_tcp_stream("127.0.0.1", socks_port)
        nursery.cancel_scope.cancel()
