"""Several backends behind one tcp or udp tunnel (issue 17 on issue 15's raw ports), as separate processes: two
agents each with their own server, connections and flows shared by weight, a target refusing taken out by its
tcp health check, draining that keeps an open connection, and affinity by the client's address."""

from __future__ import annotations

import os
import signal
import socket
import textwrap
import threading
from collections import Counter

import pytest

from tests.deployment import Deployment, free_port, wait_for
from tests.e2e.test_port_tunnels import port_tunnel

NAMED_TCP = textwrap.dedent('''
    import socket, sys, threading
    server = socket.create_server(("127.0.0.1", int(sys.argv[1])))
    def serve(conn):
        with conn:
            conn.sendall(sys.argv[2].encode() + b"\\n")
            while data := conn.recv(65536):
                conn.sendall(data)
    print("ready", flush=True)
    while True:
        threading.Thread(target=serve, args=(server.accept()[0],), daemon=True).start()
''')  # says its name, then echoes
NAMED_UDP = textwrap.dedent('''
    import socket, sys
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", int(sys.argv[1])))
    print("ready", flush=True)
    while True:
        data, client = sock.recvfrom(65535)
        sock.sendto(sys.argv[2].encode(), client)
''')  # answers each datagram with its name
TCP_CHECK = {"type": "tcp", "intervalSeconds": 0.2, "timeoutSeconds": 1, "healthyThreshold": 1,
             "unhealthyThreshold": 2}


class PortTunnels:
    """Agents `home` (servers one, udp_one) and `away` (two, udp_two), a tcp and a udp tunnel on gateway gw1."""

    def __init__(self, tmp) -> None:
        self.d = Deployment(tmp, apps={"one": ("-c", NAMED_TCP), "two": ("-c", NAMED_TCP),
                                       "udp_one": ("-c", NAMED_UDP), "udp_two": ("-c", NAMED_UDP)},
                            gateways=("gw1",))
        self.away_id, self.away = self.d.add_agent("away")
        self.tcp = port_tunnel(self.d, "tcp", self.d.apps["one"])
        self.udp = port_tunnel(self.d, "udp", self.d.apps["udp_one"])

    def set(self, tunnel: dict, one: dict, two: dict, **fields) -> list[dict]:
        """The tunnel's two backends, `one` on home and `two` away (each: its settings; `port`: another target
        port), kept as the same backends once they exist; their API view."""
        ids = [{"id": b["id"]} for b in self.d.api.get(f"/api/tunnels/{tunnel['id']}").json()["backends"]]
        ids += [{}] * (2 - len(ids))
        prefix = "udp_" if tunnel["protocol"] == "udp" else ""
        specs = []
        for index, (agent_id, name, spec) in enumerate(((self.d.agent_id, "one", one), (self.away_id, "two", two))):
            port = spec.pop("port", None) or self.d.apps[prefix + name]
            specs.append({**ids[index], "agentId": agent_id, "target": f"127.0.0.1:{port}", **spec})
        response = self.d.api.patch(f"/api/tunnels/{tunnel['id']}", json={**fields, "backends": specs})
        assert response.status_code == 200, response.text
        return response.json()["backends"]

    def connect(self) -> tuple[socket.socket, str | None]:
        """A connection through the tcp tunnel, and the name its server said (None: reset or closed)."""
        conn = socket.create_connection(("127.0.0.1", self.tcp["publicPort"]), timeout=5)
        try:
            return conn, conn.recv(64).decode().strip() or None
        except OSError:
            return conn, None

    def tcp_shares(self, count: int) -> Counter:
        found = Counter()
        for _ in range(count):
            try:
                conn, name = self.connect()
            except OSError:
                name = None
            else:
                conn.close()
            found[name] += 1
        return found

    def udp_shares(self, count: int) -> Counter:
        """The servers answering `count` flows, each from a socket of its own (a new source port)."""
        found = Counter()
        for _ in range(count):
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.settimeout(2)
                sock.sendto(b"who", ("127.0.0.1", self.udp["publicPort"]))
                try:
                    found[sock.recv(64).decode()] += 1
                except OSError:
                    found[None] += 1
        return found

    def wait_for_tcp(self, expected: set, what: str) -> None:
        wait_for(lambda: set(self.tcp_shares(20)) == expected, 30, what)


@pytest.fixture(scope="module")
def tunnels(tmp_path_factory):
    t = PortTunnels(tmp_path_factory.mktemp("portbackends"))
    try:
        yield t
    finally:
        t.d.close()


def test_tcp_connections_are_shared_three_to_one(tunnels):
    tunnels.set(tunnels.tcp, {"weight": 3}, {"weight": 1})
    tunnels.wait_for_tcp({"one", "two"}, "both agents to serve the tcp tunnel")
    shares = tunnels.tcp_shares(200)
    print(f"\ntcp weights 3:1 over 200 connections: {dict(shares)}")
    assert set(shares) == {"one", "two"}
    assert abs(shares["one"] / 200 - 0.75) <= 0.10


def test_a_refusing_target_leaves_the_pool_by_its_tcp_check(tunnels):
    refusing = free_port()  # nothing listens there: the agent's connects are refused
    tunnels.set(tunnels.tcp, {"port": refusing}, {}, healthCheck=TCP_CHECK)  # the first backend refuses
    wait_for(lambda: next(b for b in tunnels.d.api.get(f"/api/tunnels/{tunnels.tcp['id']}").json()["backends"]
                          if b["agentId"] == tunnels.d.agent_id)["health"]["status"] == "unhealthy", 30,
             "the refusing backend to be reported unhealthy")
    tunnels.wait_for_tcp({"two"}, "the refusing backend to leave the pool")
    assert tunnels.tcp_shares(100) == {"two": 100}
    tunnels.set(tunnels.tcp, {}, {}, healthCheck=TCP_CHECK)
    tunnels.wait_for_tcp({"one", "two"}, "the backend to rejoin once its target listens")


def test_a_reset_before_the_target_answers_goes_to_the_other_backend(tunnels):
    tunnels.set(tunnels.tcp, {"port": free_port()}, {}, healthCheck={"type": "none"})  # one refuses, unchecked
    tunnels.wait_for_tcp({"two"}, "the tcp tunnel to serve")
    for attempt in range(50):  # each client speaks first: what it sent goes again to the other backend
        with socket.create_connection(("127.0.0.1", tunnels.tcp["publicPort"]), timeout=5) as conn:
            conn.sendall(b"hello")
            if attempt % 2:
                conn.shutdown(socket.SHUT_WR)  # and its end of sending, too: the server closes after echoing
            received = b""
            while len(received) < len(b"two\nhello"):
                chunk = conn.recv(64)
                assert chunk, received
                received += chunk
            assert received == b"two\nhello"
            if attempt % 2:
                assert conn.recv(64) == b""


def test_megabytes_sent_before_the_target_answers_pass_whole(tunnels):
    tunnels.set(tunnels.tcp, {}, {})
    tunnels.wait_for_tcp({"one", "two"}, "both agents to serve the tcp tunnel")
    payload = os.urandom(3 * 1024 * 1024)  # far past what is kept for a replay
    with socket.create_connection(("127.0.0.1", tunnels.tcp["publicPort"]), timeout=10) as conn:
        sender = threading.Thread(target=conn.sendall, args=(payload,))
        sender.start()
        received = bytearray()
        while len(received) < len(payload) + 4:
            chunk = conn.recv(1 << 20)
            assert chunk, len(received)
            received += chunk
        sender.join()
    assert bytes(received[4:]) == payload and received[:4] in (b"one\n", b"two\n")


def test_a_draining_backend_keeps_its_open_connection(tunnels):
    tunnels.set(tunnels.tcp, {}, {}, healthCheck={"type": "none"})
    tunnels.wait_for_tcp({"one", "two"}, "both agents to serve the tcp tunnel")
    held = []
    while not held:
        conn, name = tunnels.connect()
        (held.append(conn) if name == "two" else conn.close())
    with held[0] as conn:
        tunnels.set(tunnels.tcp, {}, {"draining": True})
        tunnels.wait_for_tcp({"one"}, "new connections to avoid the draining backend")
        conn.sendall(b"still here")
        received = b""
        while len(received) < 10:
            chunk = conn.recv(64)
            assert chunk, "the draining backend's connection was closed"
            received += chunk
        assert received == b"still here"


def test_affinity_keeps_a_client_address_on_one_backend(tunnels):
    tunnels.set(tunnels.tcp, {}, {}, affinity=True)
    wait_for(lambda: None not in tunnels.tcp_shares(5), 30, "the tcp tunnel to serve")
    shares = tunnels.tcp_shares(50)
    assert len(shares) == 1 and None not in shares, shares  # every connection comes from 127.0.0.1


def test_udp_flows_are_shared_between_the_backends(tunnels):
    tunnels.set(tunnels.udp, {}, {})
    wait_for(lambda: set(tunnels.udp_shares(10)) == {"udp_one", "udp_two"}, 30, "both agents to serve udp")
    shares = tunnels.udp_shares(40)
    print(f"\nudp weights 1:1 over 40 flows: {dict(shares)}")
    assert abs(shares["udp_one"] - 20) <= 4 and abs(shares["udp_two"] - 20) <= 4


def test_connections_to_a_killed_agent_go_to_the_other_backend(tmp_path):
    t = PortTunnels(tmp_path)
    try:
        t.set(t.tcp, {}, {})
        t.wait_for_tcp({"one", "two"}, "both agents to serve the tcp tunnel")
        t.away.popen.send_signal(signal.SIGKILL)
        names: list[str | None] = []

        def one_connection() -> None:  # before the gateway sees the agent silent: some dial it, and fail
            try:
                conn, name = t.connect()
                conn.close()
            except OSError:
                name = None
            names.append(name)

        threads = [threading.Thread(target=one_connection) for _ in range(10)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert names == ["one"] * 10
        assert t.tcp_shares(20) == {"one": 20}
    finally:
        t.d.close()
