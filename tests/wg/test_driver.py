"""The Trio driver over real UDP sockets on 127.0.0.1: containment of unexpected errors, fairness between
senders within a turn, and the plain sendto/recvfrom path (Windows, or KAKUREMICHI_UDP_OFFLOAD=off)."""

from __future__ import annotations

import math
import socket
import types

import pytest
import trio

from kakuremichi.tunnel import PeerSpec, TunnelNode
from kakuremichi.wg import driver, keys
from kakuremichi.wg.device import Device
from kakuremichi.wg.driver import BATCH, WireGuardInterface
from kakuremichi.wg.fairqueue import QUANTUM
from tests.wg.sansio_helpers import ipv4

A_IP, B_IP = "10.0.0.1", "10.0.0.2"


def _pair() -> tuple[WireGuardInterface, WireGuardInterface]:
    a = WireGuardInterface(Device(keys.generate_private()), listen_host="127.0.0.1")
    b = WireGuardInterface(Device(keys.generate_private()), listen_host="127.0.0.1")
    a.device.add_peer(b.device.public_key, endpoint=("127.0.0.1", b.listen_port), allowed_ips=[f"{B_IP}/32"])
    b.device.add_peer(a.device.public_key, endpoint=("127.0.0.1", a.listen_port), allowed_ips=[f"{A_IP}/32"])
    return a, b


async def _until(condition, what: str) -> None:
    with trio.fail_after(10):
        while not condition():
            await trio.sleep(0.01)


async def test_a_raising_datagram_handler_drops_that_datagram_and_the_interface_goes_on(monkeypatch):
    a, b = _pair()
    received: list[bytes] = []
    b.attach(lambda packets: received.extend(bytes(p) for p in packets))
    real = b.device.receive_datagram
    poisoned = {"left": 3}

    def receive(data, source):
        if data[0] == 4 and len(data) > 32 and poisoned["left"]:  # a transport message carrying a packet
            poisoned["left"] -= 1
            raise RuntimeError("a bug in a parser")
        real(data, source)

    monkeypatch.setattr(b.device, "receive_datagram", receive)
    async with trio.open_nursery() as nursery:
        await nursery.start(a.run)
        await nursery.start(b.run)
        for n in range(6):
            a.send_packets([ipv4(A_IP, B_IP, b"packet %d" % n)])
            await trio.sleep(0.02)
        await _until(lambda: len(received) == 3, "the packets after the poisoned ones")
        nursery.cancel_scope.cancel()
    assert [p[20:] for p in received] == [b"packet 3", b"packet 4", b"packet 5"]
    assert b.contained.counts == {"RuntimeError": 3}


async def test_a_raising_stack_callback_loses_that_batch_only(caplog):
    a, b = _pair()
    batches: list[list[bytes]] = []

    def stack(packets):
        batches.append([bytes(p[20:]) for p in packets])
        if len(batches) == 1:
            raise ValueError("the stack choked")

    b.attach(stack)
    async with trio.open_nursery() as nursery:
        await nursery.start(a.run)
        await nursery.start(b.run)
        a.send_packets([ipv4(A_IP, B_IP, b"first")])
        await _until(lambda: batches, "the first batch")
        a.send_packets([ipv4(A_IP, B_IP, b"second")])
        await _until(lambda: len(batches) == 2, "the batch after the failed one")
        nursery.cancel_scope.cancel()
    assert batches == [[b"first"], [b"second"]]
    assert b.contained.counts == {"ValueError": 1}
    assert sum("unexpected error contained" in r.getMessage() for r in caplog.records) == 1


@pytest.mark.parametrize("budget", [math.inf, 0.0])
async def test_a_flooding_sender_does_not_push_another_senders_datagram_past_the_first_turns(monkeypatch, budget):
    """200 datagrams of one sender wait in the socket ahead of another sender's one: read in arrival
    order, that one would be handled in the second turn of BATCH; shared round-robin, in the first (in the
    second when the time budget ends every turn after one QUANTUM)."""
    monkeypatch.setattr(driver, "TURN_BUDGET", budget)
    interface = WireGuardInterface(Device(keys.generate_private()), listen_host="127.0.0.1")
    turns: list[list[tuple]] = [[]]
    real_flush = interface.flush

    def flush():
        turns.append([])
        real_flush()

    monkeypatch.setattr(interface.device, "receive_datagram", lambda data, source: turns[-1].append(source))
    monkeypatch.setattr(interface, "flush", flush)
    hostile, legit = (socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2))
    with hostile, legit:
        hostile.bind(("127.0.0.1", 0))
        legit.bind(("127.0.0.1", 0))
        legit_address = legit.getsockname()
        flood = 200
        assert BATCH < flood < driver.READ_AHEAD
        for _ in range(flood):  # unknown receiver indices: each is a transport-sized datagram to drop
            hostile.sendto(b"\x04\0\0\0" + bytes(60), ("127.0.0.1", interface.listen_port))
        legit.sendto(b"\x04\0\0\0" + bytes(60), ("127.0.0.1", interface.listen_port))
        async with trio.open_nursery() as nursery:
            await nursery.start(interface.run)
            await _until(lambda: sum(map(len, turns)) == flood + 1, "every datagram to be handled")
            nursery.cancel_scope.cancel()
    # turns[0] is what the device was given before the first flush
    if budget:
        assert len(turns[0]) == BATCH and legit_address in turns[0][:2 * QUANTUM]
    else:  # the budget ends every turn, so the other sender is served at the start of the next
        assert len(turns[0]) == QUANTUM and legit_address in turns[1] and len(turns[1]) == QUANTUM


class _WindowsLikeSocket(socket.socket):
    """A socket as Windows' CPython has it: no recvmsg, recvmsg_into or sendmsg."""

    def __getattribute__(self, name):
        if name in ("recvmsg", "recvmsg_into", "sendmsg"):
            raise AttributeError(f"'socket' object has no attribute '{name}'")
        return super().__getattribute__(name)


def _windows_like_socket_module() -> types.ModuleType:
    module = types.ModuleType("socket")
    module.__dict__.update({k: v for k, v in vars(socket).items() if k != "CMSG_SPACE"})
    module.socket = _WindowsLikeSocket
    return module


async def _echo(stream):
    async with stream:
        while data := await stream.receive_some():
            await stream.send_all(data)


async def _tunnel_round_trips() -> None:
    """Two TunnelNodes over 127.0.0.1: a TCP echo each way through the tunnel, 256 KB each."""
    one = TunnelNode(keys.generate_private(), listen_host="127.0.0.1")
    two = TunnelNode(keys.generate_private(), listen_host="127.0.0.1")
    async with trio.open_nursery() as nursery:
        await nursery.start(one.run)
        await nursery.start(two.run)
        await one.apply([A_IP], [PeerSpec(two.public_key, (f"{B_IP}/32",), ("127.0.0.1", two.listen_port))])
        await two.apply([B_IP], [PeerSpec(one.public_key, (f"{A_IP}/32",), ("127.0.0.1", one.listen_port))])
        await nursery.start(one.stack.serve_tcp, _echo, 7)
        await nursery.start(two.stack.serve_tcp, _echo, 7)
        payload = bytes(range(256)) * 1024
        with trio.fail_after(30):
            for node, to in ((one, B_IP), (two, A_IP)):
                stream = await node.stack.open_tcp_stream(to, 7)
                async with stream:
                    await stream.send_all(payload)
                    got = b""
                    while len(got) < len(payload):
                        got += await stream.receive_some()
                    assert got == payload
        nursery.cancel_scope.cancel()


async def test_a_python_without_recvmsg_sendmsg_and_cmsg_space_tunnels_both_ways(monkeypatch):
    monkeypatch.setattr(driver, "socket", _windows_like_socket_module())
    await _tunnel_round_trips()


class _CountingSocket(socket.socket):
    calls = 0

    def sendmsg(self, *args):
        type(self).calls += 1
        return super().sendmsg(*args)

    def recvmsg_into(self, *args):
        type(self).calls += 1
        return super().recvmsg_into(*args)


@pytest.mark.parametrize("switch", ["on", "off"])
async def test_the_offload_switch_off_forces_plain_sendto_and_recvfrom(monkeypatch, switch):
    if driver.sys.platform != "linux":
        pytest.skip("UDP offload exists on Linux only")
    module = types.ModuleType("socket")
    module.__dict__.update(vars(socket))
    module.socket = _CountingSocket
    monkeypatch.setattr(_CountingSocket, "calls", 0)
    monkeypatch.setattr(driver, "socket", module)
    monkeypatch.setenv(driver.OFFLOAD_SWITCH, switch)
    await _tunnel_round_trips()
    assert (_CountingSocket.calls > 0) == (switch == "on")
