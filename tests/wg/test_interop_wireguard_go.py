"""Interoperability with the reference: wireguard-go and the Linux kernel in a test-made namespace."""

from __future__ import annotations


import pytest
import trio
from scapy.layers.inet import ICMP, IP, UDP

from kakuremichi.wg import keys
from kakuremichi.wg.device import Device
from kakuremichi.wg.driver import WireGuardInterface
from tests.netns import KernelWireGuardPeer, require_netns

pytestmark = pytest.mark.netns
OUR_IP = "10.77.0.1"


@pytest.fixture
def kernel_peer():
    require_netns()
    with KernelWireGuardPeer("10.77.0.2/24") as peer:
        yield peer


class Endpoint:
    """Our device on a real UDP socket, collecting what it decrypts."""

    def __init__(self, interface: WireGuardInterface) -> None:
        self.interface = interface
        self.device = interface.device
        self.send, self.received = trio.open_memory_channel(1000)
        interface.attach(lambda packets: [self.send.send_nowait(bytes(p)) for p in packets])

    async def ping(self, dst: str, seq: int, timeout: float = 5.0) -> IP:
        request = IP(src=OUR_IP, dst=dst) / ICMP(id=0x4B4D, seq=seq) / (b"kakuremichi" * 4)
        self.interface.send_packets([bytes(request)])
        with trio.fail_after(timeout):
            while True:
                packet = IP(await self.received.receive())
                if packet.haslayer(ICMP) and packet[ICMP].type == 0 and packet[ICMP].seq == seq:
                    return packet


async def _start(nursery, kernel: KernelWireGuardPeer, *, psk: bytes | None = None,
                 endpoint: bool = True) -> Endpoint:
    device = Device(keys.generate_private())
    interface = WireGuardInterface(device, listen_host=kernel.host_ip)
    device.add_peer(kernel.public_key, preshared_key=psk,
                    endpoint=(kernel.ns_ip, kernel.listen_port) if endpoint else None,
                    allowed_ips=["10.77.0.2/32"])
    await nursery.start(interface.run)
    return Endpoint(interface)


@pytest.mark.parametrize("with_psk", [False, True], ids=["no-psk", "psk"])
async def test_we_initiate_and_kernel_answers_ping(kernel_peer, with_psk):
    psk = keys.generate_preshared() if with_psk else None
    async with trio.open_nursery() as nursery:
        ours = await _start(nursery, kernel_peer, psk=psk)
        kernel_peer.set_peer(ours.device.public_key, allowed_ips=f"{OUR_IP}/32", preshared_key=psk)
        for seq in range(1, 6):
            reply = await ours.ping("10.77.0.2", seq)
            assert reply.src == "10.77.0.2" and reply.dst == OUR_IP
            assert bytes(reply[ICMP].payload) == b"kakuremichi" * 4
        assert kernel_peer.latest_handshake(ours.device.public_key) > 0
        peer = ours.device.peers[kernel_peer.public_key]
        assert peer.current is not None and peer.current.is_initiator
        nursery.cancel_scope.cancel()


async def test_psk_mismatch_gives_no_session(kernel_peer):
    async with trio.open_nursery() as nursery:
        ours = await _start(nursery, kernel_peer, psk=keys.generate_preshared())
        kernel_peer.set_peer(ours.device.public_key, allowed_ips=f"{OUR_IP}/32",
                             preshared_key=keys.generate_preshared())
        with pytest.raises(trio.TooSlowError):
            await ours.ping("10.77.0.2", 1, timeout=2)
        assert ours.device.peers[kernel_peer.public_key].current is None
        assert kernel_peer.latest_handshake(ours.device.public_key) == 0
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("with_psk", [False, True], ids=["no-psk", "psk"])
async def test_kernel_initiates_and_sends_data(kernel_peer, with_psk):
    psk = keys.generate_preshared() if with_psk else None
    async with trio.open_nursery() as nursery:
        ours = await _start(nursery, kernel_peer, psk=psk, endpoint=False)
        port = ours.interface.listen_port
        kernel_peer.set_peer(ours.device.public_key, allowed_ips=f"{OUR_IP}/32", preshared_key=psk,
                             endpoint=f"{kernel_peer.host_ip}:{port}")
        # The kernel sends a UDP datagram into the tunnel; wireguard-go must initiate to deliver it.
        kernel_peer.exec("python3", "-c", "import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM);"
                         f"s.sendto(b'from-the-kernel', ('{OUR_IP}', 9999))")
        with trio.fail_after(5):
            while True:
                packet = IP(await ours.received.receive())
                if packet.haslayer(UDP) and packet[UDP].dport == 9999:
                    break
        assert bytes(packet[UDP].payload) == b"from-the-kernel"
        peer = ours.device.peers[kernel_peer.public_key]
        assert peer.current is not None and not peer.current.is_initiator
        assert peer.endpoint == (kernel_peer.ns_ip, kernel_peer.listen_port)  # learned by roaming
        # And the kernel's ping of our address travels through the session it created.
        reply = await ours.ping("10.77.0.2", 7)
        assert reply.src == "10.77.0.2"
        nursery.cancel_scope.cancel()


async def test_rehandshake_after_peer_restarts_with_new_key(kernel_peer):
    async with trio.open_nursery() as nursery:
        ours = await _start(nursery, kernel_peer)
        kernel_peer.set_peer(ours.device.public_key, allowed_ips=f"{OUR_IP}/32")
        await ours.ping("10.77.0.2", 1)
        old_key = kernel_peer.public_key

        kernel_peer.stop_wireguard()
        kernel_peer.start_wireguard(keys.generate_private())
        kernel_peer.set_peer(ours.device.public_key, allowed_ips=f"{OUR_IP}/32")
        ours.device.remove_peer(old_key)
        ours.device.add_peer(kernel_peer.public_key, endpoint=(kernel_peer.ns_ip, kernel_peer.listen_port),
                             allowed_ips=["10.77.0.2/32"])
        reply = await ours.ping("10.77.0.2", 2)
        assert reply.src == "10.77.0.2"
        assert kernel_peer.latest_handshake(ours.device.public_key) > 0
        nursery.cancel_scope.cancel()


async def test_recovers_when_peer_restarts_with_same_key(kernel_peer):
    """wireguard-go forgets our session; our timers must notice the silence and re-handshake."""
    async with trio.open_nursery() as nursery:
        ours = await _start(nursery, kernel_peer)
        kernel_peer.set_peer(ours.device.public_key, allowed_ips=f"{OUR_IP}/32")
        await ours.ping("10.77.0.2", 1)
        first_session = ours.device.peers[kernel_peer.public_key].current

        kernel_peer.stop_wireguard()
        kernel_peer.start_wireguard()
        kernel_peer.set_peer(ours.device.public_key, allowed_ips=f"{OUR_IP}/32")
        # Keep pinging: replies resume once the new-handshake timer (15 s + jitter of silence) fires.
        with trio.fail_after(30):
            seq = 2
            while True:
                try:
                    await ours.ping("10.77.0.2", seq, timeout=1)
                    break
                except trio.TooSlowError:
                    seq += 1
        assert ours.device.peers[kernel_peer.public_key].current is not first_session
        nursery.cancel_scope.cancel()
