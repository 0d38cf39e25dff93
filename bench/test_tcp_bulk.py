"""Scenario 2: one bulk TCP stream. Through wireguard-go + kernel TCP (two namespaces), and a direct
loopback connection, as the yardsticks for our WireGuard + netstack."""

from __future__ import annotations

import json
import shutil
import subprocess
import time

import pytest

from tests.netns import KernelWireGuardPeer, netns_available

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


@pytest.mark.skipif(shutil.which("iperf3") is None, reason="needs iperf3")
def test_direct_loopback(record):
    mbps = _iperf(lambda a: subprocess.run(a, capture_output=True, text=True, check=True).stdout,
                  lambda a: subprocess.Popen(a, stdout=subprocess.DEVNULL), "127.0.0.1")
    record("tcp_bulk", direct_mbps=mbps)


@pytest.mark.skipif(bool(netns_available()) or shutil.which("iperf3") is None,
                    reason=netns_available() or "needs iperf3")
def test_wireguard_go_kernel_tcp(record):
    with KernelWireGuardPeer("10.88.0.1/24") as a, KernelWireGuardPeer("10.88.0.2/24", link_to=a) as b:
        a.set_peer(b.public_key, allowed_ips="10.88.0.2/32", endpoint=f"{b.ns_ip}:{b.listen_port}")
        b.set_peer(a.public_key, allowed_ips="10.88.0.1/32", endpoint=f"{b.host_ip}:{a.listen_port}")
        mbps = _iperf(lambda args: a.exec(*args).stdout,
                      lambda args: b.popen(*args, stdout=subprocess.DEVNULL), "10.88.0.2")
    record("tcp_bulk", wireguard_go_mbps=mbps)
