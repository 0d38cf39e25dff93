"""tcp and udp tunnels end to end (issue 15), every part a separate process: control, a gateway, an agent,
and real servers only the agent reaches (OpenSSH, nginx, iperf3, dnsmasq) used by their real clients through
the gateway's public ports."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import textwrap
import time

import pytest

from kakuremichi import proxyprotocol
from tests.deployment import Deployment, free_port, wait_for
from tests.nginx import proxy_protocol_nginx
from tests.sshd import throwaway_sshd

ECHO = textwrap.dedent('''
    import socket, sys, threading
    server = socket.create_server(("127.0.0.1", int(sys.argv[1])))
    def serve(conn):
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)
    print("ready", flush=True)
    while True:
        threading.Thread(target=serve, args=(server.accept()[0],), daemon=True).start()
''')
UDP_ECHO = textwrap.dedent('''
    import socket, sys
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", int(sys.argv[1])))
    print("ready", flush=True)
    while True:
        data, client = sock.recvfrom(65535)
        sock.sendto(data, client)
''')


def need(*tools: str, package: str) -> None:
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (Debian package {package})")


_given: set[int] = set()


def public_port() -> int:
    """A port of control's default --public-ports (20000-29999) free for TCP and UDP on loopback, and not given
    before (a tunnel's port is bound only once the gateway has its config)."""
    for port in range(20000 + os.getpid() % 5000, 30000):
        if port in _given:
            continue
        _given.add(port)
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp, \
                    socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                tcp.bind(("127.0.0.1", port))
                udp.bind(("127.0.0.1", port))
            return port
        except OSError:
            continue
    raise AssertionError("no free public port")


@pytest.fixture
def deployment(tmp_path):
    d = Deployment(tmp_path, {"echo": ("-c", ECHO), "udp_echo": ("-c", UDP_ECHO)}, gateways=("gw1",))
    yield d
    d.close()


def port_tunnel(d: Deployment, kind: str, target_port: int, **extra) -> dict:
    body = {"protocol": kind, "agentId": d.agent_id, "target": f"127.0.0.1:{target_port}",
            "publicPort": public_port(), **extra}
    response = d.api.post("/api/tunnels", json=body)
    assert response.status_code == 201, response.text
    return response.json()


def echoes(port: int, payload: bytes = b"ping", host: str = "127.0.0.1") -> bool:
    """Whether a connection to `host:port` echoes `payload` (False while the tunnel is not up yet)."""
    try:
        with socket.create_connection((host, port), timeout=3) as conn:
            conn.sendall(payload)
            received = b""
            while len(received) < len(payload):
                chunk = conn.recv(65536)
                if not chunk:
                    return False
                received += chunk
            return received == payload
    except OSError:
        return False


def served(check, what: str, timeout: float = 30) -> None:
    wait_for(check, timeout, what)


def test_a_tcp_connection_is_carried_and_logged(deployment):
    tunnel = port_tunnel(deployment, "tcp", deployment.apps["echo"])
    served(lambda: echoes(tunnel["publicPort"]), "the tcp tunnel to echo")
    big = os.urandom(3 * 1024 * 1024)
    assert echoes(tunnel["publicPort"], big)
    log = deployment.tmp / "gatewaygw1.log"
    wait_for(lambda: b"bytes_in=3145728 bytes_out=3145728" in log.read_bytes(), 10, "the connection's log line")
    line = next(l for l in log.read_text().splitlines() if "bytes_in=3145728" in l)
    assert f"tunnel={tunnel['id']}" in line and "client=127.0.0.1:" in line and "duration=" in line


def test_ssh_through_a_tcp_tunnel_runs_a_command_and_copies_20_mb(deployment, tmp_path):
    need("sshd", "ssh", "scp", "ssh-keygen", package="openssh-server and openssh-client")
    if os.geteuid() != 0:
        pytest.skip("needs root (sshd's privilege separation)")
    with throwaway_sshd(tmp_path / "sshd") as sshd:
        tunnel = port_tunnel(deployment, "tcp", sshd.port)
        login = [*sshd.options(), "-o", "Port=" + str(tunnel["publicPort"])]

        def command_runs() -> bool:
            done = subprocess.run(["ssh", *login, f"{sshd.user}@127.0.0.1", "echo through-the-tunnel $((6*7))"],
                                  capture_output=True, text=True, timeout=30)
            return done.stdout == "through-the-tunnel 42\n"

        served(command_runs, "ssh through the tunnel")
        source, copy = tmp_path / "20mb", tmp_path / "20mb.copy"
        source.write_bytes(os.urandom(20 * 1024 * 1024))
        subprocess.run(["scp", *login, str(source), f"{sshd.user}@127.0.0.1:{copy}"], check=True, timeout=120)
        assert hashlib.sha256(copy.read_bytes()).digest() == hashlib.sha256(source.read_bytes()).digest()


def test_two_gateways_serve_the_port_and_one_survives_the_other(deployment):
    deployment.gateway_args = ("--listen-host", "127.0.0.2")  # the second one's own address, the same port
    deployment.add_gateway("gw2")
    tunnel = port_tunnel(deployment, "tcp", deployment.apps["echo"])
    port = tunnel["publicPort"]
    served(lambda: echoes(port) and echoes(port, host="127.0.0.2"), "the port on both gateways")
    deployment.gateways["gw1"][0].stop()
    assert not _listening(port)
    assert echoes(port, host="127.0.0.2")


def test_nginx_sees_the_client_address_through_proxy_protocol(deployment, tmp_path):
    need("nginx", package="nginx")
    with proxy_protocol_nginx(tmp_path / "nginx", "$proxy_protocol_addr:$proxy_protocol_port $remote_addr",
                              "client=$proxy_protocol_addr\\n", _listening) as (nginx_port, log):
        tunnel = port_tunnel(deployment, "tcp", nginx_port, proxyProtocol="v1")
        url = f"http://127.0.0.1:{tunnel['publicPort']}/"
        served(lambda: _curl(url) == "client=127.0.0.1\n", "nginx through the tunnel with PROXY v1")
        access = log.read_text()
        assert access.startswith("127.0.0.1:") and " 127.0.0.1" in access  # the client's address and port
        changed = deployment.api.patch(f"/api/tunnels/{tunnel['id']}", json={"proxyProtocol": "v2"})
        assert changed.status_code == 200 and changed.json()["proxyProtocol"] == "v2"
        served(lambda: _curl(url) == "client=127.0.0.1\n" and
               len(log.read_text().splitlines()) > len(access.splitlines()), "PROXY v2")
        deployment.api.patch(f"/api/tunnels/{tunnel['id']}", json={"proxyProtocol": None})
        served(lambda: _curl(url) is None, "nginx refusing a connection without the header")  # it must be on


def test_a_refused_target_resets_the_client(deployment):
    tunnel = port_tunnel(deployment, "tcp", free_port())  # nothing listens there
    served(lambda: _reset(tunnel["publicPort"]), "a reset from the refused target", timeout=30)


def test_a_port_moved_by_patch_leaves_other_connections_open(deployment):
    kept = port_tunnel(deployment, "tcp", deployment.apps["echo"])
    moved = port_tunnel(deployment, "tcp", deployment.apps["echo"])
    served(lambda: echoes(kept["publicPort"]) and echoes(moved["publicPort"]), "both tunnels")
    with socket.create_connection(("127.0.0.1", kept["publicPort"]), timeout=5) as open_connection:
        open_connection.sendall(b"before")
        assert open_connection.recv(100) == b"before"
        new_port = public_port()
        assert deployment.api.patch(f"/api/tunnels/{moved['id']}", json={"publicPort": new_port}).status_code == 200
        served(lambda: echoes(new_port), "the moved port")
        assert not _listening(moved["publicPort"])
        open_connection.sendall(b"after")
        assert open_connection.recv(100) == b"after"
        disabled = deployment.api.patch(f"/api/tunnels/{moved['id']}", json={"enabled": False})
        assert disabled.status_code == 200
        served(lambda: not _listening(new_port), "the disabled tunnel's port to close")
        open_connection.sendall(b"still")
        assert open_connection.recv(100) == b"still"


def test_a_gateways_workers_share_a_tunnel_port(tmp_path):
    d = Deployment(tmp_path, {"echo": ("-c", ECHO)}, gateways=("gw1",), workers=2)
    try:
        tunnel = port_tunnel(d, "tcp", d.apps["echo"])
        wait_for(lambda: len(d.worker_pids("gw1")) == 2, 30, "two workers")
        listening = f"listening tunnel={tunnel['id']} protocol=tcp".encode()
        wait_for(lambda: (d.tmp / "gatewaygw1.log").read_bytes().count(listening) == 2, 30,
                 "both workers to listen on the port (SO_REUSEPORT) rather than one failing")
        served(lambda: all(echoes(tunnel["publicPort"]) for _ in range(8)), "the port through both workers")
        assert d.api.get(f"/api/tunnels/{tunnel['id']}").json()["bindErrors"] == {}
    finally:
        d.close()


def test_a_port_the_gateway_cannot_bind_is_shown_on_the_tunnel(deployment):
    with socket.create_server(("127.0.0.1", public_port())) as squatter:
        port = squatter.getsockname()[1]
        tunnel = port_tunnel(deployment, "tcp", deployment.apps["echo"], publicPort=port)

        def shown() -> bool:
            errors = deployment.api.get(f"/api/tunnels/{tunnel['id']}").json()["bindErrors"]
            return "Address already in use" in errors.get("gw1", "")

        served(shown, "the bind error on the tunnel")
    other = port_tunnel(deployment, "tcp", deployment.apps["echo"])
    served(lambda: echoes(other["publicPort"]), "another tunnel served all the same")


def test_access_rules_and_the_per_source_limit(deployment):
    denied = port_tunnel(deployment, "tcp", deployment.apps["echo"],
                         access={"rules": [{"action": "allow", "cidr": "192.0.2.0/24"}]})
    limited = port_tunnel(deployment, "tcp", deployment.apps["echo"], access={"maxConnectionsPerSource": 1})
    served(lambda: echoes(limited["publicPort"]), "the limited tunnel")
    assert _listening(denied["publicPort"]) and _reset(denied["publicPort"])  # 127.0.0.1 is not allowed
    held = []
    served(lambda: held.append(_echoing(limited["publicPort"])) or held[-1] is not None,
           "one connection (the previous one's end may not have reached the gateway yet)")
    with held[-1]:
        assert _reset(limited["publicPort"])  # a second one at once is refused
    served(lambda: echoes(limited["publicPort"]), "a connection once the first one closed")
    opened = deployment.api.patch(f"/api/tunnels/{denied['id']}", json={"access": {
        "rules": [{"action": "allow", "cidr": "127.0.0.0/8"}]}})
    assert opened.status_code == 200
    served(lambda: echoes(denied["publicPort"]), "the tunnel once 127.0.0.0/8 is allowed")


def test_udp_flows_carry_datagrams_with_a_proxy_header_each(deployment):
    tunnel = port_tunnel(deployment, "udp", deployment.apps["udp_echo"], proxyProtocol="v2", udpIdleTimeout=2)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.bind(("127.0.0.1", 0))
        client.settimeout(0.5)

        def echoed() -> bytes | None:
            client.sendto(b"hello", ("127.0.0.1", tunnel["publicPort"]))
            try:
                return client.recv(65535)
            except socket.timeout:
                return None

        answers = []
        served(lambda: answers.append(echoed()) or answers[-1] is not None, "a udp echo through the tunnel")
        header, length = proxyprotocol.decode(answers[-1])
        assert header.transport == "udp" and header.source == client.getsockname()
        assert answers[-1][length:] == b"hello"
    log = deployment.tmp / "gatewaygw1.log"
    wait_for(lambda: b"udp flow" in log.read_bytes(), 15, "the flow's log line after its idle timeout")

    # a udp tunnel deleted while a flow is open ends that flow only: the agent and gateway serve on
    kept = port_tunnel(deployment, "tcp", deployment.apps["echo"])
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.settimeout(0.5)
        client.sendto(b"again", ("127.0.0.1", tunnel["publicPort"]))
        served(lambda: echoes(kept["publicPort"]), "the tcp tunnel")
        assert deployment.api.delete(f"/api/tunnels/{tunnel['id']}").status_code == 204
        served(lambda: not _udp_answers(client, tunnel["publicPort"]), "the deleted udp tunnel to stop")
    time.sleep(1)  # the agent and gateway have applied the config without the tunnel
    assert deployment.agent.popen.poll() is None and deployment.gateways["gw1"][0].popen.poll() is None
    assert echoes(kept["publicPort"])
    # with a flow open, the agent stops cleanly (its stack closes the udp sockets as it goes)
    other = port_tunnel(deployment, "udp", deployment.apps["udp_echo"])
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.settimeout(0.5)
        served(lambda: _udp_answers(client, other["publicPort"]), "another udp tunnel")
        deployment.agent.stop()
    assert b"Traceback" not in log.read_bytes() + (deployment.tmp / "agentagent.log").read_bytes()


def test_a_udp_tunnel_holds_at_most_its_flow_cap(deployment):
    tunnel = port_tunnel(deployment, "udp", deployment.apps["udp_echo"], udpMaxFlows=1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as first, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as second:
        first.settimeout(0.5)
        second.settimeout(0.5)
        served(lambda: _udp_answers(first, tunnel["publicPort"]), "the first flow")
        assert not any(_udp_answers(second, tunnel["publicPort"]) for _ in range(3))  # the cap is reached
        assert _udp_answers(first, tunnel["publicPort"])


def test_dig_through_a_udp_tunnel_to_dnsmasq(deployment):
    need("dig", package="bind9-dnsutils")
    need("dnsmasq", package="dnsmasq-base")
    dns_port = public_port()  # free for UDP and TCP: dnsmasq listens on both
    dnsmasq = subprocess.Popen(["dnsmasq", "--keep-in-foreground", "--no-resolv", "--no-hosts", "--bind-interfaces",
                                "--listen-address=127.0.0.1", f"--port={dns_port}", "--user=root",
                                "--address=/tunnelled.test/192.0.2.7", "--pid-file="])
    try:
        tunnel = port_tunnel(deployment, "udp", dns_port)

        def answered() -> bool:
            done = subprocess.run(["dig", "@127.0.0.1", "-p", str(tunnel["publicPort"]), "tunnelled.test", "+short",
                                   "+time=1", "+tries=1"], capture_output=True, text=True, timeout=10)
            return done.stdout.strip() == "192.0.2.7"

        served(answered, "dig's answer through the udp tunnel")
    finally:
        dnsmasq.terminate()
        dnsmasq.wait(10)


def test_iperf3_tcp_and_udp(deployment):
    need("iperf3", package="iperf3")
    iperf_port = free_port()
    server = subprocess.Popen(["iperf3", "-s", "-p", str(iperf_port), "-B", "127.0.0.1"], stdout=subprocess.DEVNULL)
    try:
        wait_for(lambda: _listening(iperf_port), 10, "iperf3 -s")
        tcp = port_tunnel(deployment, "tcp", iperf_port)
        port_tunnel(deployment, "udp", iperf_port, publicPort=tcp["publicPort"])  # iperf3 -u: TCP control too
        served(lambda: _iperf(tcp["publicPort"], "-t", "1") is not None, "iperf3")
        result = _iperf_retried(tcp["publicPort"], "-t", "2")
        assert result["end"]["sum_received"]["bytes"] > 1024 * 1024
        udp = _iperf_retried(tcp["publicPort"], "-u", "-b", "5M", "-l", "1200", "-t", "2")
        summary = udp["end"]["sum"]
        assert summary["packets"] > 100 and summary["lost_percent"] < 50  # loss is reported, small on loopback
    finally:
        server.terminate()
        server.wait(10)


def _iperf(port: int, *args: str) -> dict | None:
    """iperf3's JSON report, or None if the run failed (iperf3 may exit 0 with an "error" in the report)."""
    done = subprocess.run(["iperf3", "-c", "127.0.0.1", "-p", str(port), "-J", *args], capture_output=True,
                          text=True, timeout=60)
    try:
        report = json.loads(done.stdout)
    except ValueError:
        return None
    return report if done.returncode == 0 and "error" not in report else None


def _iperf_retried(port: int, *args: str, tries: int = 3) -> dict:
    """An iperf3 run, tried again if the server was still winding up the previous test (it serves one at a
    time and, on a loaded machine, may answer a new client before it is done with the last one)."""
    for _ in range(tries):
        report = _iperf(port, *args)
        if report is not None:
            return report
        time.sleep(1)
    raise AssertionError(f"iperf3 {' '.join(args)} failed {tries} times")


def _echoing(port: int) -> socket.socket | None:
    """A connection to `port` that echoed, left open; None if it did not."""
    conn = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        conn.sendall(b"one")
        if conn.recv(10) == b"one":
            return conn
    except OSError:
        pass
    conn.close()
    return None


def _udp_answers(client: socket.socket, port: int) -> bool:
    client.sendto(b"hello", ("127.0.0.1", port))
    try:
        return bool(client.recv(65535))
    except OSError:
        return False


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def _reset(port: int) -> bool:
    """Whether a connection to `port` is reset (rather than answered or closed cleanly)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=3) as conn:
            conn.sendall(b"x")
            conn.settimeout(5)
            conn.recv(10)
            return False
    except (ConnectionResetError, BrokenPipeError):
        return True
    except OSError:
        return False


def _curl(url: str) -> str | None:
    done = subprocess.run(["curl", "-s", "--max-time", "5", url], capture_output=True, text=True)
    return done.stdout if done.returncode == 0 else None
