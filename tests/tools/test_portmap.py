"""`wg forward` / `wg expose` through wireguard-go to the Linux kernel's TCP, both directions."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import pytest
import trio

from kakuremichi.tools import portmap
from kakuremichi.wg import keys
from tests.netns import KernelWireGuardPeer, needs, require_netns

pytestmark = pytest.mark.netns
ROOT = Path(__file__).resolve().parents[2]
BIG = 50 * 1024 * 1024

ECHO_SERVER = textwrap.dedent("""
    import asyncio, sys
    async def handle(reader, writer):
        data = await reader.read()          # until the client half-closes
        writer.write(b"echo:" + data)
        await writer.drain()
        writer.close()
    async def main():
        server = await asyncio.start_server(handle, sys.argv[1], int(sys.argv[2]), backlog=512)
        print("ready", flush=True)
        await server.serve_forever()
    asyncio.run(main())
""")


@pytest.fixture(scope="module")
def big_file(tmp_path_factory):
    directory = tmp_path_factory.mktemp("www")
    data = os.urandom(BIG)
    (directory / "big.bin").write_bytes(data)
    return directory, hashlib.sha256(data).hexdigest()


@pytest.fixture
def tunnel(tmp_path):
    """A kernel peer at 10.77.0.2 and a wg-quick file for our side at 10.77.0.1."""
    require_netns()
    private = keys.generate_private()
    with KernelWireGuardPeer("10.77.0.2/24") as kernel:
        kernel.set_peer(keys.public_from_private(private), allowed_ips="10.77.0.1/32")
        conf = tmp_path / "ours.conf"
        conf.write_text(f"[Interface]\nPrivateKey = {keys.encode(private)}\nAddress = 10.77.0.1/24\n\n"
                        f"[Peer]\nPublicKey = {keys.encode(kernel.public_key)}\n"
                        f"Endpoint = {kernel.ns_ip}:{kernel.listen_port}\nAllowedIPs = 10.77.0.0/24\n"
                        "PersistentKeepalive = 25\n")  # opens the path so the kernel can reach us
        yield kernel, str(conf)


def _start_in_kernel(kernel: KernelWireGuardPeer, *args: str) -> subprocess.Popen:
    process = kernel.popen(*args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    return process


async def test_forward_downloads_50_mb_from_a_kernel_http_server(tunnel, big_file):
    kernel, conf = tunnel
    directory, digest = big_file
    server = _start_in_kernel(kernel, sys.executable, "-m", "http.server", "8000", "--bind", "10.77.0.2",
                              "--directory", str(directory))
    try:
        time.sleep(0.5)
        async with trio.open_nursery() as nursery:
            (port,) = await nursery.start(portmap.forward, conf, [portmap.parse_forward("0=10.77.0.2:8000")])
            sha = hashlib.sha256()
            async with httpx.AsyncClient(timeout=60) as client:
                async with client.stream("GET", f"http://127.0.0.1:{port}/big.bin") as response:
                    assert response.status_code == 200
                    async for chunk in response.aiter_raw():
                        sha.update(chunk)
            assert sha.hexdigest() == digest
            nursery.cancel_scope.cancel()
    finally:
        server.kill()


@needs("curl", "curl")
@needs("ping", "iputils-ping")
async def test_expose_serves_50_mb_to_kernel_curl(tunnel, big_file):
    kernel, conf = tunnel
    directory, digest = big_file
    local = subprocess.Popen([sys.executable, "-m", "http.server", "0", "--bind", "127.0.0.1", "--directory",
                              str(directory)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        port = int(local.stdout.readline().split("port ")[1].split()[0])
        async with trio.open_nursery() as nursery:
            await nursery.start(portmap.expose, conf, [portmap.parse_expose(f"8080=127.0.0.1:{port}")])
            result = await trio.to_thread.run_sync(lambda: kernel.exec(
                "sh", "-c", "curl -sS --max-time 120 http://10.77.0.1:8080/big.bin | sha256sum", check=False))
            assert result.returncode == 0, result.stderr
            assert result.stdout.split()[0] == digest
            # our address answers ping from the kernel side
            ping = await trio.to_thread.run_sync(lambda: kernel.exec("ping", "-c", "3", "-i", "0.2", "-W", "2",
                                                                     "10.77.0.1", check=False))
            assert ping.returncode == 0 and " 0% packet loss" in ping.stdout
            nursery.cancel_scope.cancel()
    finally:
        local.kill()


async def test_forward_200_concurrent_connections_with_half_close(tunnel):
    kernel, conf = tunnel
    server = _start_in_kernel(kernel, sys.executable, "-c", ECHO_SERVER, "10.77.0.2", "7000")
    try:
        assert server.stdout.readline().strip() == "ready"
        async with trio.open_nursery() as nursery:
            (port,) = await nursery.start(portmap.forward, conf, [portmap.parse_forward("0=10.77.0.2:7000")])
            answers = {}

            async def one(i: int) -> None:
                stream = await trio.open_tcp_stream("127.0.0.1", port)
                message = f"hello {i} ".encode() * 100
                await stream.send_all(message)
                await stream.send_eof()  # half-close: the echo server answers only after our EOF
                data = b""
                while chunk := await stream.receive_some():
                    data += chunk
                answers[i] = data == b"echo:" + message
                await stream.aclose()

            with trio.fail_after(60):
                async with trio.open_nursery() as clients:
                    for i in range(200):
                        clients.start_soon(one, i)
            assert len(answers) == 200 and all(answers.values())
            nursery.cancel_scope.cancel()
    finally:
        server.kill()


async def test_forward_to_a_closed_port_closes_the_client_quickly(tunnel):
    kernel, conf = tunnel
    async with trio.open_nursery() as nursery:
        (port,) = await nursery.start(portmap.forward, conf, [portmap.parse_forward("0=10.77.0.2:9")])
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        with trio.fail_after(5):  # the kernel's RST must reach us; no waiting for a timeout
            try:
                assert await stream.receive_some() == b""
            except trio.BrokenResourceError:
                pass
        nursery.cancel_scope.cancel()


@needs("ping", "iputils-ping")  # the readiness probe
def test_expose_command_stops_cleanly_on_ctrl_c(tunnel):
    kernel, conf = tunnel
    process = subprocess.Popen([sys.executable, "-m", "kakuremichi.tools", "expose", "--config", conf,
                                "8080=127.0.0.1:9"], stderr=subprocess.PIPE, text=True,
                               env=dict(os.environ, PYTHONPATH=str(ROOT)))
    deadline = time.monotonic() + 10
    while kernel.exec("ping", "-c", "1", "-W", "1", "10.77.0.1", check=False).returncode != 0:
        assert time.monotonic() < deadline, "expose never came up"
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=10)
    assert process.returncode == 130
    assert "Traceback" not in stderr and "exposing" in stderr
