"""Scenario 2: one bulk TCP stream. Through wireguard-go + kernel TCP (two namespaces), and a direct
loopback connection, as the yardsticks for our WireGuard + netstack."""

from __future__ import annotations

import json
import socket
import subprocess
import time

import pytest

from tests.deployment import free_port
from tests.netns import needs, netns_available, wireguard_go_pair

SECONDS = 5


def _iperf(client_exec, server_exec, address: str) -> float:
    """Mbit/s of one iperf3 TCP stream from client to server."""
    server = server_exec(["iperf3", "-s", "-1", "-B", address])
    try:
        time.sleep(0.3)
        out = client_exec(["iperf3", "-c", address, "-t", str(SECONDS), "-J"])
        return json.loads(out)["end"]["sum_received"]["bits_per_second"] / 1e6
    finally:
        server.kill()
        server.wait()


@needs("iperf3", "iperf3")
def test_direct_loopback(record):
    mbps = _iperf(lambda a: subprocess.run(a, capture_output=True, text=True, check=True).stdout,
                  lambda a: subprocess.Popen(a, stdout=subprocess.DEVNULL), "127.0.0.1")
    record("tcp_bulk", direct_mbps=mbps)


@needs("iperf3", "iperf3")
@pytest.mark.skipif(bool(netns_available()), reason=netns_available() or "")
def test_wireguard_go_kernel_tcp(record):
    with wireguard_go_pair("10.88.0.1/24", "10.88.0.2/24") as (a, b):
        mbps = _iperf(lambda args: a.exec(*args).stdout,
                      lambda args: b.popen(*args, stdout=subprocess.DEVNULL), "10.88.0.2")
    record("tcp_bulk", wireguard_go_mbps=mbps)


@needs("iperf3", "iperf3")
def test_ours_both_ends(record, tmp_path):
    """iperf3 → `wg forward` (our netstack + WireGuard, process 1) → `wg expose` (process 2) → iperf3."""
    import os
    import sys
    from pathlib import Path

    from kakuremichi.wg import keys

    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=str(root))
    a, b = keys.generate_private(), keys.generate_private()
    port_a, port_b = free_port(socket.SOCK_DGRAM), free_port(socket.SOCK_DGRAM)
    iperf_port, forward_port = free_port(), free_port()
    conf_a, conf_b = tmp_path / "a.conf", tmp_path / "b.conf"
    conf_a.write_text(f"[Interface]\nPrivateKey = {keys.encode(a)}\nAddress = 10.66.0.1/24\nListenPort = {port_a}\n"
                      f"[Peer]\nPublicKey = {keys.encode(keys.public_from_private(b))}\n"
                      f"Endpoint = 127.0.0.1:{port_b}\nAllowedIPs = 10.66.0.2/32\n")
    conf_b.write_text(f"[Interface]\nPrivateKey = {keys.encode(b)}\nAddress = 10.66.0.2/24\nListenPort = {port_b}\n"
                      f"[Peer]\nPublicKey = {keys.encode(keys.public_from_private(a))}\n"
                      f"Endpoint = 127.0.0.1:{port_a}\nAllowedIPs = 10.66.0.1/32\n")
    tool = [sys.executable, "-m", "kakuremichi.tools"]
    processes = [
        subprocess.Popen(["iperf3", "-s", "-B", "127.0.0.1", "-p", str(iperf_port)], stdout=subprocess.DEVNULL),
        subprocess.Popen(tool + ["--log-level", "warning", "expose", "--config", str(conf_b),
                                 f"5201=127.0.0.1:{iperf_port}"], env=env),
        subprocess.Popen(tool + ["--log-level", "warning", "forward", "--config", str(conf_a),
                                 f"127.0.0.1:{forward_port}=10.66.0.2:5201"], env=env),
    ]
    try:
        time.sleep(1.5)
        out = subprocess.run(["iperf3", "-c", "127.0.0.1", "-p", str(forward_port), "-t", str(SECONDS), "-J"],
                             capture_output=True, text=True, check=True, timeout=60).stdout
        mbps = json.loads(out)["end"]["sum_received"]["bits_per_second"] / 1e6
    finally:
        for p in processes:
            p.kill()
            p.wait()
    record("tcp_bulk", ours_mbps=mbps)
