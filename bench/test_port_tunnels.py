"""tcp and udp tunnels (issue 15): iperf3 through a tcp tunnel beside the direct loopback path and an `ssh -R`
forward of the same server, and iperf3 UDP datagrams/s with their loss through a udp tunnel beside the direct
path, all in one run on this machine (runs kept short: SECONDS each)."""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest

from tests.deployment import Deployment, free_port, wait_for
from tests.e2e.test_port_tunnels import port_tunnel
from tests.sshd import throwaway_sshd

SECONDS = 3
UDP_RATE = "50M"  # offered load, 1,200-byte datagrams
TOOLS = ("iperf3", "ssh", "sshd", "ssh-keygen")


def _iperf(port: int, *args: str) -> dict:
    """iperf3's end summary; tried again while the server is still busy with the previous run."""
    for _ in range(10):
        done = subprocess.run(["iperf3", "-c", "127.0.0.1", "-p", str(port), "-t", str(SECONDS), "-J", *args],
                              capture_output=True, text=True, timeout=60)
        result = json.loads(done.stdout or "{}")
        if done.returncode == 0 and "sum_received" in result.get("end", {}):
            return result["end"]
        time.sleep(0.5)
    raise AssertionError(f"iperf3 {' '.join(args)} to port {port} failed: {done.stdout[-300:]}{done.stderr}")


def _answers(port: int) -> bool:
    """Whether a short iperf3 run to `port` works (not yet, while a tunnel or forward is coming up)."""
    try:
        return subprocess.run(["iperf3", "-c", "127.0.0.1", "-p", str(port), "-t", "1"],
                              capture_output=True, timeout=20).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def _mbps(port: int, *args: str) -> float:
    return _iperf(port, *args)["sum_received"]["bits_per_second"] / 1e6


def _udp(port: int) -> tuple[float, float]:
    """(datagrams/s received, loss in %) of iperf3 -u at UDP_RATE."""
    summary = _iperf(port, "-u", "-b", UDP_RATE, "-l", "1200")["sum_received"]
    received = summary["packets"] - summary["lost_packets"]
    return received / summary["seconds"], summary["lost_percent"]


@pytest.mark.skipif(any(__import__("shutil").which(t) is None for t in TOOLS) or os.geteuid() != 0,
                    reason="needs root and iperf3, openssh-server, openssh-client (Debian packages)")
def test_port_tunnels_beside_direct_and_ssh_r(record, tmp_path):
    iperf_port = free_port()
    server = subprocess.Popen(["iperf3", "-s", "-p", str(iperf_port), "-B", "127.0.0.1"], stdout=subprocess.DEVNULL)
    d = Deployment(tmp_path, {}, gateways=("gw1",), log_level="warning")
    try:
        tcp = port_tunnel(d, "tcp", iperf_port)
        port_tunnel(d, "udp", iperf_port, publicPort=tcp["publicPort"])  # iperf3 -u keeps a TCP control connection
        wait_for(lambda: _answers(tcp["publicPort"]), 30, "the tunnels")
        with throwaway_sshd(tmp_path / "sshd") as sshd:
            forwarded = free_port()
            ssh = subprocess.Popen(["ssh", "-N", *sshd.options(), "-p", str(sshd.port), "-o",
                                    "ExitOnForwardFailure=yes", "-R", f"127.0.0.1:{forwarded}:127.0.0.1:{iperf_port}",
                                    f"{sshd.user}@127.0.0.1"])
            try:
                wait_for(lambda: _answers(forwarded), 20, "ssh -R")
                ssh_mbps = _mbps(forwarded)
            finally:
                ssh.terminate()
                ssh.wait(10)
        direct_mbps, tunnel_mbps = _mbps(iperf_port), _mbps(tcp["publicPort"])
        tunnel_reverse_mbps = _mbps(tcp["publicPort"], "-R")  # the target sends: agent → gateway → client
        (direct_rate, direct_loss), (tunnel_rate, tunnel_loss) = _udp(iperf_port), _udp(tcp["publicPort"])
    finally:
        d.close()
        server.terminate()
        server.wait(10)
    record("port_tunnels", tcp_direct_mbps=direct_mbps, tcp_tunnel_mbps=tunnel_mbps, tcp_ssh_r_mbps=ssh_mbps,
           tcp_tunnel_reverse_mbps=tunnel_reverse_mbps,
           tcp_ratio_vs_ssh_r=tunnel_mbps / ssh_mbps, udp_direct_datagrams_s=direct_rate,
           udp_direct_loss_percent=direct_loss, udp_tunnel_datagrams_s=tunnel_rate,
           udp_tunnel_loss_percent=tunnel_loss)
