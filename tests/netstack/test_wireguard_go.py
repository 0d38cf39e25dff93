"""Our netstack on our WireGuard, against wireguard-go and the Linux kernel in a test-made namespace.

The path the product uses (`wg forward` / `expose`): TCP of our stack, encrypted by our WireGuard, to a
standard wireguard-go whose other side is the kernel's TCP.
"""

from __future__ import annotations

import hashlib
import os
import shutil

import pytest
import trio

from kakuremichi.netstack import NetStack
from kakuremichi.wg import keys
from kakuremichi.wg.device import Device
from kakuremichi.wg.driver import WireGuardInterface
from tests.netns import KernelWireGuardPeer, require_netns
from tests.netstack.kernel_side import blob_server, curl_sha256, http_get, http_server, kernel_process, \
    run_in_namespace

pytestmark = pytest.mark.netns
OURS, KERNEL = "10.78.0.1", "10.78.0.2"
BULK = 50 * 1024 * 1024


@pytest.fixture
def wireguard_go():
    require_netns()
    with KernelWireGuardPeer(f"{KERNEL}/24") as peer:
        yield peer


@pytest.fixture
async def tunnel_stack(wireguard_go, nursery):
    device = Device(keys.generate_private())
    interface = WireGuardInterface(device, listen_host=wireguard_go.host_ip)
    device.add_peer(wireguard_go.public_key, endpoint=(wireguard_go.ns_ip, wireguard_go.listen_port),
                    allowed_ips=[f"{KERNEL}/32"])
    wireguard_go.set_peer(device.public_key, allowed_ips=f"{OURS}/32",
                          endpoint=f"{wireguard_go.host_ip}:{interface.listen_port}")
    stack = NetStack(interface, [OURS])
    interface.attach(stack.receive_packets)
    await nursery.start(interface.run)
    await nursery.start(stack.run)
    return stack


async def test_download_through_wireguard_go(wireguard_go, tunnel_stack, tmp_path):
    blob = os.urandom(BULK)
    (tmp_path / "blob").write_bytes(blob)
    async with kernel_process(wireguard_go.name, http_server(KERNEL, tmp_path), ready=b"Serving HTTP"):
        stream = await tunnel_stack.open_tcp_stream(KERNEL, 8080)
        started = trio.current_time()
        body = await http_get(stream, "/blob")
        elapsed = trio.current_time() - started
        await stream.aclose()
    assert hashlib.sha256(body).digest() == hashlib.sha256(blob).digest()
    print(f"\nwireguard-go -> ours: {BULK / elapsed / 1e6:.1f} MB/s")


async def test_kernel_curl_through_wireguard_go(wireguard_go, tunnel_stack, nursery):
    if shutil.which("curl") is None:
        pytest.skip("needs curl (apt-get install curl)")
    blob = os.urandom(BULK)
    await nursery.start(tunnel_stack.serve_tcp, blob_server(blob), 8080)
    started = trio.current_time()
    out = await run_in_namespace(wireguard_go.name, curl_sha256(f"http://{OURS}:8080/blob"))
    elapsed = trio.current_time() - started
    assert out.split()[0] == hashlib.sha256(blob).hexdigest()
    print(f"\nours -> wireguard-go curl: {BULK / elapsed / 1e6:.1f} MB/s")
