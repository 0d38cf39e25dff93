"""A daemon that cannot bind a port says which port, which flag sets it and what to do, in one line, before it
creates anything (control's shown-once admin token)."""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys

import pytest

from tests.deployment import child_env, free_port

GATEWAY_KEY = "gtw_" + "k" * 43
AGENT_KEY = "agt_" + "k" * 43
CONTROL_URL = ["--control-url", "ws://127.0.0.1:9/ws"]
PR_CAPBSET_DROP, CAP_NET_BIND_SERVICE = 24, 10


def kakuremichi(*args: str, key: str = GATEWAY_KEY, preexec_fn=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kakuremichi", *args], capture_output=True, text=True, timeout=60,
                          env=dict(child_env(), KAKUREMICHI_API_KEY=key), preexec_fn=preexec_fn)


@pytest.fixture
def held_tcp_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def gateway(tmp_path, *args: str, **kwargs) -> subprocess.CompletedProcess:
    return kakuremichi("gateway", *CONTROL_URL, "--public-host", "gw.example", "--data-dir", str(tmp_path / "gw"),
                       "--listen-host", "127.0.0.1", *args, **kwargs)


@pytest.mark.parametrize("flag, what", [("--http-port", "HTTP"), ("--https-port", "HTTPS")])
def test_a_gateway_port_in_use_names_the_port_and_its_flag(tmp_path, held_tcp_port, flag, what):
    other = "--https-port" if flag == "--http-port" else "--http-port"
    result = gateway(tmp_path, flag, str(held_tcp_port), other, "0")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr == (f"kakuremichi gateway: cannot listen for {what} on port {held_tcp_port} ({flag}): "
                             f"Address already in use; another process is listening on it: stop that one or choose "
                             f"another port with {flag}\n")


def _without_net_bind_service() -> None:
    """In the child before exec: a root process keeps no CAP_NET_BIND_SERVICE once it leaves the bounding set."""
    if os.geteuid() == 0 and ctypes.CDLL(None).prctl(PR_CAPBSET_DROP, CAP_NET_BIND_SERVICE, 0, 0, 0) != 0:
        raise OSError("cannot drop CAP_NET_BIND_SERVICE")


def test_port_80_without_the_privilege_says_how_to_get_it(tmp_path):
    with open("/proc/sys/net/ipv4/ip_unprivileged_port_start") as f:
        if int(f.read()) <= 80:
            pytest.skip("every process may bind port 80 here (net.ipv4.ip_unprivileged_port_start)")
    result = gateway(tmp_path, "--http-port", "80", "--https-port", "0", preexec_fn=_without_net_bind_service)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "cannot listen for HTTP on port 80 (--http-port): Permission denied;" in result.stderr
    assert ("choose a port >= 1024 with --http-port and map the public port to it (docker run -p 80:8080), or "
            "grant the process CAP_NET_BIND_SERVICE") in result.stderr


@pytest.mark.parametrize("command", ["gateway", "agent"])
def test_a_wireguard_port_in_use_names_wireguard_port(tmp_path, command):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as held:
        held.bind(("0.0.0.0", 0))
        port = held.getsockname()[1]
        if command == "gateway":
            result = gateway(tmp_path, "--http-port", "0", "--https-port", "0", "--wireguard-port", str(port))
        else:
            result = kakuremichi("agent", *CONTROL_URL, "--data-dir", str(tmp_path / "agent"), "--wireguard-port",
                                 str(port), key=AGENT_KEY)
    assert result.returncode == 2 and "--listen-port" not in result.stderr
    assert result.stderr == (f"kakuremichi {command}: cannot listen for WireGuard (UDP) on port {port} "
                             f"(--wireguard-port): Address already in use; another process is listening on it: stop "
                             f"that one or choose another port with --wireguard-port\n")


def test_control_that_cannot_listen_makes_no_admin_token(tmp_path, held_tcp_port):
    data = ["--data-dir", str(tmp_path / "control")]
    result = kakuremichi("control", "--listen", f"127.0.0.1:{held_tcp_port}", *data)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr == (f"kakuremichi control: cannot listen for control's HTTP and WebSocket on port "
                             f"{held_tcp_port} (--listen): Address already in use; another process is listening on "
                             f"it: stop that one or choose another port with --listen\n")
    assert "Admin token" not in result.stdout
    # the token is still to be made: the next start that can listen shows it
    control = subprocess.Popen([sys.executable, "-m", "kakuremichi", "control", "--listen",
                                f"127.0.0.1:{free_port()}", *data], stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, text=True, env=child_env())
    try:
        assert control.stdout.readline().startswith("Admin token (shown once")
    finally:
        control.send_signal(signal.SIGTERM)
        control.wait(timeout=30)


@pytest.mark.parametrize("flag", ["--control-port", "--http-port"])
def test_dev_names_the_port_in_use_and_its_flag(tmp_path, held_tcp_port, flag):
    result = kakuremichi("dev", "--data-dir", str(tmp_path / "dev"), flag, str(held_tcp_port))
    assert result.returncode == 2
    assert f"on port {held_tcp_port} ({flag}): Address already in use" in result.stderr
    assert not (tmp_path / "dev").exists()  # nothing started or made
