"""TunnelNode: two data planes over loopback, reconfigured live without disturbing other traffic."""

from __future__ import annotations

import trio

from kakuremichi.tunnel import PeerSpec, TunnelNode
from kakuremichi.wg import keys


async def _echo(stream):
    try:
        async with stream:
            while data := await stream.receive_some():
                await stream.send_all(data)
    except trio.BrokenResourceError:
        pass  # its address was removed under it


async def _roundtrip(stream, payload: bytes) -> bytes:
    await stream.send_all(payload)
    got = b""
    while len(got) < len(payload):
        got += await stream.receive_some()
    return got


async def test_apply_changes_only_what_differs():
    gateway = TunnelNode(keys.generate_private(), listen_host="127.0.0.1")
    agent = TunnelNode(keys.generate_private(), listen_host="127.0.0.1")
    async with trio.open_nursery() as nursery:
        await nursery.start(gateway.run)
        await nursery.start(agent.run)
        await agent.apply(["10.1.0.2", "10.2.0.2"], [
            PeerSpec(gateway.public_key, ("10.1.0.254/32", "10.2.0.254/32"), ("localhost", gateway.listen_port), 25)])
        await gateway.apply(["10.1.0.254", "10.2.0.254"], [
            PeerSpec(agent.public_key, ("10.1.0.2/32", "10.2.0.2/32"))])
        await nursery.start(agent.stack.serve_tcp, _echo, 80)

        with trio.fail_after(10):
            first = await gateway.stack.open_tcp_stream("10.1.0.2", 80, local_address="10.1.0.254")
            second = await gateway.stack.open_tcp_stream("10.2.0.2", 80, local_address="10.2.0.254")
            assert await _roundtrip(first, b"one") == b"one"
            session = gateway.device.peers[agent.public_key].current

            # A new unrelated peer and the removal of tunnel 2's address: tunnel 1 must not notice.
            other = keys.public_from_private(keys.generate_private())
            await agent.apply(["10.1.0.2"], [
                PeerSpec(gateway.public_key, ("10.1.0.254/32", "10.2.0.254/32"),
                         ("localhost", gateway.listen_port), 25),
                PeerSpec(other, ("10.9.0.1/32",), ("127.0.0.1", 9))])
            assert await _roundtrip(first, b"still here") == b"still here"
            assert gateway.device.peers[agent.public_key].current is session  # no new handshake
            try:
                await _roundtrip(second, b"gone?")
                raise AssertionError("the connection on a removed address must be reset")
            except trio.BrokenResourceError:
                pass
            assert set(agent.device.peers) == {gateway.public_key, other}

            # Dropping a peer removes it from the device.
            await agent.apply(["10.1.0.2"], [PeerSpec(gateway.public_key, ("10.1.0.254/32",),
                                                      ("localhost", gateway.listen_port), 25)])
            assert set(agent.device.peers) == {gateway.public_key}
            assert await _roundtrip(first, b"after") == b"after"
        nursery.cancel_scope.cancel()


async def test_a_restarted_node_handshakes_at_once_where_it_recalls_a_peer():
    """An agent keeps its session with a gateway that restarts with the same key; the restarted gateway,
    told where the agent was, handshakes at once, so the agent's next packets get through within a second
    rather than after the agent's own 15 s of silence."""
    private = keys.generate_private()
    gateway = TunnelNode(private, listen_host="127.0.0.1")
    agent = TunnelNode(keys.generate_private(), listen_host="127.0.0.1")
    port = gateway.listen_port
    async with trio.open_nursery() as nursery:
        await nursery.start(agent.run)
        await nursery.start(agent.stack.serve_tcp, _echo, 80)
        await agent.apply(["10.1.0.2"], [PeerSpec(gateway.public_key, ("10.1.0.254/32",), ("127.0.0.1", port), 25)])
        async with trio.open_nursery() as first_life:
            await first_life.start(gateway.run)
            await gateway.apply(["10.1.0.254"], [PeerSpec(agent.public_key, ("10.1.0.2/32",))])
            with trio.fail_after(10):
                stream = await gateway.stack.open_tcp_stream("10.1.0.2", 80)
                assert await _roundtrip(stream, b"before") == b"before"
            first_life.cancel_scope.cancel()
        agent_endpoint = ("127.0.0.1", agent.listen_port)
        await trio.sleep(0.1)  # a restart takes longer: initiations closer than a TAI64N tick look replayed
        restarted = TunnelNode(private, listen_host="127.0.0.1", listen_port=port)
        await nursery.start(restarted.run)
        await restarted.apply(["10.1.0.254"], [PeerSpec(agent.public_key, ("10.1.0.2/32",))])
        await nursery.start(restarted.stack.serve_tcp, _echo, 1080)
        restarted.hint_endpoint(agent.public_key, agent_endpoint)
        with trio.fail_after(2):  # the agent connects (as to an exit): on its old session, until replaced
            stream = await agent.stack.open_tcp_stream("10.1.0.254", 1080)
            assert await _roundtrip(stream, b"after") == b"after"
        nursery.cancel_scope.cancel()


async def test_connections_to_a_peer_that_skips_checksums_send_none_and_others_do():
    """Control marks its own nodes as peers that skip TCP checksums; any other peer (a standard WireGuard
    with a kernel behind it) gets them."""
    gateway = TunnelNode(keys.generate_private(), listen_host="127.0.0.1")
    agent = TunnelNode(keys.generate_private(), listen_host="127.0.0.1")
    async with trio.open_nursery() as nursery:
        await nursery.start(gateway.run)
        await nursery.start(agent.run)
        await agent.apply(["10.1.0.2"], [PeerSpec(gateway.public_key, ("10.1.0.254/32",),
                                                  ("localhost", gateway.listen_port), needs_checksums=False)])
        await gateway.apply(["10.1.0.254"], [PeerSpec(agent.public_key, ("10.1.0.2/32",))])
        sums = []
        gateway_receive = gateway.stack.core.receive

        def receive(packets, now):
            sums.extend(int.from_bytes(bytes(p[36:38]), "big") for p in packets if len(p) >= 40 and p[9] == 6)
            gateway_receive(packets, now)

        gateway.stack.core.receive = receive
        await nursery.start(gateway.stack.serve_tcp, _echo, 80)
        with trio.fail_after(10):
            stream = await agent.stack.open_tcp_stream("10.1.0.254", 80)
            assert await _roundtrip(stream, b"ping" * 100) == b"ping" * 100
        assert sums and set(sums) == {0}  # the agent → gateway segments: none summed
        assert agent._needs_checksums(int.from_bytes(bytes([10, 1, 0, 254]), "big")) is False
        assert gateway._needs_checksums(int.from_bytes(bytes([10, 1, 0, 2]), "big")) is True
        assert agent._needs_checksums(int.from_bytes(bytes([192, 0, 2, 1]), "big")) is True  # no peer: it may check
        nursery.cancel_scope.cancel()
