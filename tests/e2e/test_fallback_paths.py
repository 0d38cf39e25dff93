"""The WireGuard paths other platforms take, forced on Linux so CI runs them end to end: the socket API of
Windows' CPython (no recvmsg/sendmsg/CMSG_SPACE: before the guard the agent died at start), and
--udp-offload off (plain sendto/recvfrom where GSO/GRO would work)."""

from __future__ import annotations

import socket

import httpx

from kakuremichi.agent.cli import build_parser
from kakuremichi.options import apply_udp_offload
from kakuremichi.wg import driver
from tests.deployment import Deployment, wait_for
from tests.e2e.test_tunnel_end_to_end import APP, serves
from tests.windows_sockets import MARKER

MB = 1024 * 1024
BLOCK = bytes(range(256)) * 256  # what APP's /bytes/N repeats


def download_through(deployment: Deployment, size: int) -> bytes:
    response = httpx.get(deployment.url("gw1", f"/bytes/{size}"), headers={"host": "app.example.test"}, timeout=60)
    assert response.status_code == 200, response.text
    return response.content


def serve_and_download(deployment: Deployment) -> None:
    deployment.tunnel("app.example.test", "one")
    wait_for(lambda: serves(deployment, "gw1", "app.example.test", "one"), 30, "the tunnel")
    body = download_through(deployment, 8 * MB)
    assert body == (BLOCK * (8 * MB // len(BLOCK) + 1))[:8 * MB]


def test_a_tunnel_serves_with_the_socket_api_of_windows(tmp_path):
    deployment = Deployment(tmp_path, apps={"one": ("-c", APP)}, gateways=("gw1",), launcher="tests.windows_sockets")
    try:
        serve_and_download(deployment)
        for log in ("agentagent.log", "gatewaygw1.log"):
            assert MARKER in (tmp_path / log).read_text()  # the API was really hidden there
    finally:
        deployment.close()


def test_a_tunnel_serves_with_udp_offload_off(tmp_path):
    off = ("--udp-offload", "off")
    deployment = Deployment(tmp_path, apps={"one": ("-c", APP)}, gateways=("gw1",), agent_args=off, gateway_args=off)
    try:
        serve_and_download(deployment)
    finally:
        deployment.close()


def test_udp_offload_off_turns_the_drivers_batching_off(monkeypatch):
    monkeypatch.setenv(driver.OFFLOAD_SWITCH, "auto")  # restored after the test: apply_udp_offload writes it
    monkeypatch.setenv("KAKUREMICHI_API_KEY", "agt_test")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for value, batching in (("off", False), ("auto", driver.sys.platform == "linux")):
            apply_udp_offload(build_parser("agent").parse_args(["--control-url", "http://c", "--udp-offload", value]))
            assert driver.udp_offload_possible(sock) is batching
