"""Our netstack on our WireGuard, against wireguard-go and the Linux kernel in a test-made namespace.

The path the product uses (`wg forward` / `expose`): TCP of our stack, encrypted by our WireGuard, to a
standard wireguard-go whose other side is the kernel's TCP.
"""

from __future__ import annotations

import shutil

import pytest

from kakuremichi.netstack.trio_stack import NetStack
from kakuremichi.wg import keys
from kakuremichi.wg.device import Device
from kakuremichi.wg.driver import WireGuardInterface
from tests.netns import KernelWireGuardPeer, require_netns
from tests.netstack.kernel_side import download_from_kernel, kernel_curl_from_us

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
    rate = await download_from_kernel(tunnel_stack, wireguard_go.name, KERNEL, tmp_path, BULK)
    print(f"\nwireguard-go -> ours: {rate:.1f} MB/s")


async def test_kernel_curl_through_wireguard_go(wireguard_go, tunnel_stack, nursery):
    if shutil.which("curl") is None:
        pytest.skip("needs curl (apt-get install curl)")
    rate = await kernel_curl_from_us(tunnel_stack, nursery, wireguard_go.name, OURS, BULK)
    print(f"\nours -> wireguard-go curl: {rate:.1f} MB/s")
