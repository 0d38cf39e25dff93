"""Each peer's datagrams queue in a socket of their own (wg/peersockets.py), on real loopback sockets."""

from __future__ import annotations

import socket
import struct

import pytest
import trio

from kakuremichi.wg import driver, keys, peersockets
from kakuremichi.wg.device import Device
from kakuremichi.wg.driver import WireGuardInterface
from kakuremichi.wg.fairqueue import QUANTUM
from tests.wg.sansio_helpers import ipv4

pytestmark = pytest.mark.skipif(not peersockets.possible(), reason="a socket per peer needs Linux (SO_REUSEPORT, epoll)")

GATEWAY_IP, HOSTILE_IP, LEGIT_IP = "10.0.0.1", "10.0.0.2", "10.0.0.3"
UDP, UDP_SEGMENT = getattr(socket, "SOL_UDP", 17), 103


def gateway_gro() -> bool:
    probe = _node()
    try:
        return probe._gro and probe._gso
    finally:
        probe.sock.close()


def _node() -> WireGuardInterface:
    return WireGuardInterface(Device(keys.generate_private()), listen_host="127.0.0.1")


def _peer(a: WireGuardInterface, b: WireGuardInterface, a_ip: str, b_ip: str) -> None:
    a.device.add_peer(b.device.public_key, endpoint=("127.0.0.1", b.listen_port), allowed_ips=[f"{b_ip}/32"])
    b.device.add_peer(a.device.public_key, endpoint=("127.0.0.1", a.listen_port), allowed_ips=[f"{a_ip}/32"])


async def _until(condition, what: str) -> None:
    with trio.fail_after(10):
        while not condition():
            await trio.sleep(0.01)


@pytest.mark.parametrize("coalesced", [False, True], ids=["datagrams", "gso-runs"])
async def test_a_flood_bigger_than_any_socket_buffer_neither_delays_nor_loses_another_peers_datagram(monkeypatch,
                                                                                                   coalesced):
    """The hostile peer's 30,000 datagrams wait in its own socket, which overflows; the legitimate peer's
    one, sent after all of them, is among the first handled, not behind thousands (or dropped by a
    full shared buffer). Sent as runs of 64 (UDP GSO, as our own interface sends), each receive reads a
    whole run: those must not fill the queue before the other peer's socket is read at all."""
    if coalesced and not gateway_gro():
        pytest.skip("UDP GSO/GRO unavailable here")
    gateway, hostile, legit = _node(), _node(), _node()
    _peer(hostile, gateway, HOSTILE_IP, GATEWAY_IP)
    _peer(legit, gateway, LEGIT_IP, GATEWAY_IP)
    arrived: list[bytes] = []
    gateway.attach(lambda packets: arrived.extend(bytes(p[20:]) for p in packets))
    handled: list[tuple] = []
    real = gateway.device.receive_datagram

    def receive(data, source):
        handled.append(source)
        real(data, source)

    async with trio.open_nursery() as nursery:
        for node in (gateway, hostile, legit):
            await nursery.start(node.run)
        hostile.send_packets([ipv4(HOSTILE_IP, GATEWAY_IP, b"hello")])
        legit.send_packets([ipv4(LEGIT_IP, GATEWAY_IP, b"hello")])
        await _until(lambda: arrived.count(b"hello") == 2, "both peers' sessions")
        assert len(gateway.peer_sockets) == 2
        monkeypatch.setattr(gateway.device, "receive_datagram", receive)
        # no checkpoint from here until the legitimate packet is sent: the gateway reads nothing meanwhile
        port = ("127.0.0.1", gateway.listen_port)
        sent = 0
        junk = b"\x04\0\0\0" + bytes(60)  # an unknown receiver index: cheap for the gateway to drop, once read
        run = 64 if coalesced else 1
        for _ in range(30_000 // run):
            try:
                if coalesced:
                    hostile.sock.sendmsg([junk] * run, [(UDP, UDP_SEGMENT, struct.pack("=H", len(junk)))], 0, port)
                else:
                    hostile.sock.sendto(junk, port)
                sent += run
            except BlockingIOError:
                break
        assert sent > 5_000
        legit.send_packets([ipv4(LEGIT_IP, GATEWAY_IP, b"legitimate")])
        legit_address = ("127.0.0.1", legit.listen_port)
        await _until(lambda: b"legitimate" in arrived, "the legitimate peer's packet")
        nursery.cancel_scope.cancel()
    assert handled.index(legit_address) <= 2 * QUANTUM


async def test_a_peer_gets_a_socket_when_heard_a_new_one_when_it_roams_and_none_once_removed():
    gateway, agent = _node(), _node()
    _peer(agent, gateway, HOSTILE_IP, GATEWAY_IP)
    arrived: list[bytes] = []
    gateway.attach(lambda packets: arrived.extend(bytes(p[20:]) for p in packets))
    roamed = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    roamed.bind(("127.0.0.1", 0))
    async with trio.open_nursery() as nursery:
        await nursery.start(gateway.run)
        await nursery.start(agent.run)
        assert len(gateway.peer_sockets) == 0  # configured endpoints are not trusted: only where a peer is heard
        agent.send_packets([ipv4(HOSTILE_IP, GATEWAY_IP, b"one")])
        await _until(lambda: b"one" in arrived, "the first packet")
        assert len(gateway.peer_sockets) == 1
        first = gateway.peer_sockets._by_peer[agent.device.public_key]
        assert first.getpeername() == ("127.0.0.1", agent.listen_port)
        # the agent roams: its datagrams now leave from another port
        agent.sock, old = roamed, agent.sock
        agent.send_packets([ipv4(HOSTILE_IP, GATEWAY_IP, b"two")])
        await _until(lambda: b"two" in arrived, "the packet from the new address")
        moved = gateway.peer_sockets._by_peer[agent.device.public_key]
        assert moved.getpeername() == roamed.getsockname() and first.fileno() == -1
        gateway.device.remove_peer(agent.device.public_key)
        gateway.flush()
        assert len(gateway.peer_sockets) == 0
        agent.sock = old
        nursery.cancel_scope.cancel()
    roamed.close()


def test_a_wireguard_port_already_taken_is_refused_as_without_peer_sockets():
    taken = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    taken.bind(("127.0.0.1", 0))
    with taken, pytest.raises(OSError, match="cannot listen for WireGuard"):
        WireGuardInterface(Device(keys.generate_private()), listen_host="127.0.0.1",
                           listen_port=taken.getsockname()[1])
    first = _node()
    with pytest.raises(OSError, match="cannot listen for WireGuard"):
        WireGuardInterface(Device(keys.generate_private()), listen_host="127.0.0.1", listen_port=first.listen_port)
    first.sock.close()


async def test_a_flooding_peer_is_muted_and_served_only_when_the_others_leave_the_thread_idle(monkeypatch):
    """A backlog in the hostile peer's socket while the legitimate peer is heard: the hostile socket is
    muted, so the work the legitimate packet sets off (here a task taking 50 scheduler rounds, as a proxy
    answering it would) runs with no flood datagram handled in between; the flood is served once the
    thread is idle, and the socket is given back when read empty."""
    monkeypatch.setattr(driver, "BULK_MAX_WAIT", 60.0)  # idle moments only, however slow this machine is
    gateway, hostile, legit = _node(), _node(), _node()
    _peer(hostile, gateway, HOSTILE_IP, GATEWAY_IP)
    _peer(legit, gateway, LEGIT_IP, GATEWAY_IP)
    handled: list[tuple] = []
    during: list[int] = []
    async with trio.open_nursery() as nursery:

        async def answer():  # the legitimate tenant's work: many steps, each a scheduler round
            start = len(handled)
            for _ in range(50):
                await trio.lowlevel.checkpoint()
            during.append(len(handled) - start)

        def arrived(packets):
            if any(bytes(p[20:]) == b"legitimate" for p in packets):
                nursery.start_soon(answer)

        gateway.attach(arrived)
        for node in (gateway, hostile, legit):
            await nursery.start(node.run)
        for node, ip in ((hostile, HOSTILE_IP), (legit, LEGIT_IP)):
            node.send_packets([ipv4(ip, GATEWAY_IP, b"hello")])
        await _until(lambda: len(gateway.peer_sockets) == 2, "both peers' sockets")
        legit.send_packets([ipv4(LEGIT_IP, GATEWAY_IP, b"heard")])  # now through its own socket
        await trio.sleep(0.05)
        real = gateway.device.receive_datagram
        monkeypatch.setattr(gateway.device, "receive_datagram",
                            lambda data, source: (handled.append(source), real(data, source)))
        port = ("127.0.0.1", gateway.listen_port)
        for _ in range(3_000):  # no checkpoint: all of it waits in the hostile peer's socket
            hostile.sock.sendto(b"\x04\0\0\0" + bytes(60), port)
        legit.send_packets([ipv4(LEGIT_IP, GATEWAY_IP, b"legitimate")])
        await _until(lambda: during, "the legitimate tenant's work")
        hostile_address = ("127.0.0.1", hostile.listen_port)
        await _until(lambda: not gateway.peer_sockets.muted, "the hostile socket to be given back")
        nursery.cancel_scope.cancel()
    assert during == [0]
    assert handled.count(hostile_address) > 1_000  # the flood was served all the same, once the thread was idle
