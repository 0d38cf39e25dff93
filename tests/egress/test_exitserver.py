"""The exit's connect step on real sockets, and the SOCKS5 reply for each way it can fail."""

from __future__ import annotations

import contextlib
import errno
import socket
import struct

import msgspec
import pytest
import trio

from kakuremichi.egress import exitserver, socks5
from kakuremichi.egress.dialer import ExitDialer, ExitRoute
from kakuremichi.egress.exitserver import ExitServer, connect_checked, reply_code
from kakuremichi.egress.policy import DestinationPolicy, Refused
from kakuremichi.egress.trio_socks5 import request_connect
from kakuremichi.protocol import EXIT_PORT, RouteConfig
from kakuremichi.tunnel import PeerSpec, TunnelNode
from kakuremichi.wg import keys
from tests.deployment import free_port


@pytest.mark.parametrize("exc, code", [
    (Refused("private"), socks5.NOT_ALLOWED),
    (trio.TooSlowError(), socks5.TTL_EXPIRED),
    (socket.gaierror(socket.EAI_NONAME, "Name or service not known"), socks5.HOST_UNREACHABLE),
    (ConnectionRefusedError(errno.ECONNREFUSED, "refused"), socks5.CONNECTION_REFUSED),
    (OSError(errno.ENETUNREACH, "network unreachable"), socks5.NETWORK_UNREACHABLE),
    (OSError(errno.EHOSTUNREACH, "no route"), socks5.HOST_UNREACHABLE),
    (OSError(errno.EMFILE, "too many open files"), socks5.GENERAL_FAILURE),
])
def test_reply_codes(exc, code):
    assert reply_code(exc) == code


def test_connect_checked_connects_only_where_the_policy_allows():
    async def main():
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = listeners[0].socket.getsockname()[1]
        stream = await connect_checked(DestinationPolicy(allow_private=True), "localhost", port)
        async with stream, listeners[0]:
            accepted = await listeners[0].accept()
            await stream.send_all(b"ping")
            assert await accepted.receive_some(4) == b"ping"
            await accepted.aclose()
        with pytest.raises(Refused):
            await connect_checked(DestinationPolicy(), "localhost", port)
        with pytest.raises(ConnectionRefusedError):
            await connect_checked(DestinationPolicy(allow_private=True), "127.0.0.1", free_port())

    trio.run(main)


GATEWAY_IP, AGENT_IP = "10.77.0.254", "10.77.0.2"
EXIT_ROUTE = RouteConfig(domain="exit.example.test", agent_ip=AGENT_IP, gateway_ip=GATEWAY_IP, tunnel_id="t1",
                         exit=True)


@contextlib.asynccontextmanager
async def exit_pair(**options):
    """A gateway's ExitServer (`options` go to it) and an agent's node, joined by WireGuard over loopback
    UDP; yields (exit server, agent node, gateway node)."""
    gateway = TunnelNode(keys.generate_private(), listen_host="127.0.0.1")
    agent = TunnelNode(keys.generate_private(), listen_host="127.0.0.1")
    server = ExitServer(gateway.stack, DestinationPolicy(allow_private=True), **options)
    async with trio.open_nursery() as nursery:
        await nursery.start(gateway.run)
        await nursery.start(agent.run)
        await agent.apply([AGENT_IP], [PeerSpec(gateway.public_key, (f"{GATEWAY_IP}/32",),
                                                ("127.0.0.1", gateway.listen_port), 25)])
        await gateway.apply([GATEWAY_IP], [PeerSpec(agent.public_key, (f"{AGENT_IP}/32",))])
        server.update([EXIT_ROUTE])
        await nursery.start(server.run)
        yield server, agent, gateway
        nursery.cancel_scope.cancel()


async def ask_exit(agent: TunnelNode, port: int):
    with trio.fail_after(10):
        stream = await agent.stack.open_tcp_stream(GATEWAY_IP, EXIT_PORT, local_address=AGENT_IP)
        try:
            return await request_connect(stream, "127.0.0.1", port)
        finally:
            stream.abort()


async def test_a_destination_that_resets_at_once_breaks_nothing(monkeypatch):
    """The destination's reset may arrive between the connect and the exit's reply: that connection ends,
    the exit goes on serving."""
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = listener.socket.getsockname()[1]
    real_connect = exitserver.connect_checked

    async def connect_then_reset(policy, host, port_):
        upstream = await real_connect(policy, host, port_)
        accepted = await listener.accept()
        accepted.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        accepted.socket.close()  # an RST
        while True:
            try:
                upstream.socket.getpeername()
            except OSError:
                return upstream
            await trio.sleep(0.01)

    async with listener, exit_pair() as (server, agent, _gateway):
        monkeypatch.setattr(exitserver, "connect_checked", connect_then_reset)
        with pytest.raises(trio.BrokenResourceError):
            await ask_exit(agent, port)
        monkeypatch.setattr(exitserver, "connect_checked", real_connect)
        event, _ = await ask_exit(agent, free_port())
        assert event.code == socks5.CONNECTION_REFUSED  # the exit still answers


async def test_an_exit_turned_off_during_the_connect_is_not_spliced(monkeypatch):
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = listener.socket.getsockname()[1]
    real_connect = exitserver.connect_checked

    async with listener, exit_pair() as (server, agent, _gateway):
        async def connect_while_turned_off(policy, host, port_):
            server.update([msgspec.structs.replace(EXIT_ROUTE, exit=False)])  # a config push arrives meanwhile
            return await real_connect(policy, host, port_)

        monkeypatch.setattr(exitserver, "connect_checked", connect_while_turned_off)
        event, _ = await ask_exit(agent, port)
        assert event.code == socks5.NOT_ALLOWED
        assert server.active_connections == 0


async def test_a_host_name_the_resolver_cannot_encode_is_unreachable():
    """Names the agent's own encoder would refuse can still come from a hand-written client."""
    async with exit_pair() as (server, agent, _gateway):
        for name in (b"a..b", b"a" * 64 + b".test", b"."):
            with trio.fail_after(10):
                stream = await agent.stack.open_tcp_stream(GATEWAY_IP, EXIT_PORT, local_address=AGENT_IP)
                await stream.send_all(b"\x05\x01\x00\x05\x01\x00\x03" + bytes((len(name),)) + name + b"\x00\x50")
                reply = b""
                while len(reply) < 12 and (data := await stream.receive_some()):
                    reply += data
                stream.abort()
            assert reply[:4] == bytes((5, 0, 5, socks5.HOST_UNREACHABLE)), (name, reply)


async def test_a_failure_in_one_connection_leaves_the_exit_serving(caplog):
    class BrokenPolicy(DestinationPolicy):
        async def resolve(self, host, port):
            raise RuntimeError("a bug in the exit")

    async with exit_pair() as (server, agent, _gateway):
        server.policy = BrokenPolicy()
        for _ in range(3):
            with pytest.raises(trio.BrokenResourceError):
                await ask_exit(agent, free_port())  # reset, without an answer
        assert server.faults.counts == {"RuntimeError": 3}
        assert caplog.text.count("exit connection: unexpected error contained") == 1  # once per interval
        server.policy = DestinationPolicy(allow_private=True)
        event, _ = await ask_exit(agent, free_port())
        assert event.code == socks5.CONNECTION_REFUSED


async def test_a_tunnel_holds_only_so_many_exit_connections():
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = listener.socket.getsockname()[1]
    async with listener, exit_pair(max_connections_per_tunnel=2) as (server, agent, _gateway):
        async def connected():
            stream = await agent.stack.open_tcp_stream(GATEWAY_IP, EXIT_PORT, local_address=AGENT_IP)
            event, _ = await request_connect(stream, "127.0.0.1", port)
            assert isinstance(event, socks5.Connected)
            return stream

        with trio.fail_after(10):
            first, _second = await connected(), await connected()
            with pytest.raises(trio.BrokenResourceError):
                await connected()  # reset before any answer: the agent tries another gateway
            first.abort()
            while server.active_connections > 1:
                await trio.sleep(0.01)
            await connected()  # a slot again


async def test_an_agent_opening_exit_connections_back_to_back_gets_them_at_the_exits_rate():
    """Past the rate the agent's SYNs are dropped, not refused: its connection still opens, once its stack
    retries after the bucket has refilled."""
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = listener.socket.getsockname()[1]
    async with listener, exit_pair(opens_per_second=4) as (_server, agent, gateway):
        with trio.fail_after(10):
            for _ in range(4):  # the burst
                event, _ = await ask_exit(agent, port)
                assert isinstance(event, socks5.Connected)
            assert gateway.stack.core.drops["syn-rate-limited"] == 0
            event, _ = await ask_exit(agent, port)
            assert isinstance(event, socks5.Connected)
            assert gateway.stack.core.drops["syn-rate-limited"] >= 1


async def test_the_connections_of_an_agent_that_vanished_are_reclaimed():
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = listener.socket.getsockname()[1]
    async with listener, exit_pair(keepalive=(0.2, 0.1, 2)) as (server, agent, _gateway):
        with trio.fail_after(10):
            stream = await agent.stack.open_tcp_stream(GATEWAY_IP, EXIT_PORT, local_address=AGENT_IP)
            event, _ = await request_connect(stream, "127.0.0.1", port)
            assert isinstance(event, socks5.Connected) and server.active_connections == 1
            await agent.apply([AGENT_IP], [])  # the gateway unreachable: no FIN, no reset will ever come
            while server.active_connections:
                await trio.sleep(0.05)


async def test_the_agent_gives_up_on_a_gateway_that_vanished():
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = listener.socket.getsockname()[1]
    async with listener, exit_pair() as (server, agent, gateway):
        dialer = ExitDialer(agent, keepalive=(0.2, 0.1, 2))
        with trio.fail_after(10):
            stream, _early = await dialer.open([ExitRoute(AGENT_IP, GATEWAY_IP)], "127.0.0.1", port)
            await gateway.apply([GATEWAY_IP], [])  # the gateway forgets the agent: no FIN, no reset will come
            with pytest.raises(trio.BrokenResourceError):
                while await stream.receive_some():
                    pass
