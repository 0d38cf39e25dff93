"""kakuremichi.bridge: a userspace TCP connection joined with an OS socket (what `pipe.splice` uses for the
agent's targets, the exit node and `wg forward`/`expose`), on a real loopback socket."""

from __future__ import annotations

import socket
import struct

import trio
import trio.testing

from kakuremichi.bridge import bridge
from kakuremichi.leansocket import LeanSocketStream
from kakuremichi.pipe import splice
from tests.netstack.pair import Steps, connected, stack_pair


async def _bridged(a, b, nursery, handler):
    """A client stream on `a` whose server side on `b` is spliced to a loopback OS server run by
    `handler(server_stream)`; returns the client and a dict that gets the splice's counts."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    nursery.start_soon(trio.serve_listeners, handler, listeners)
    client, far = await connected(a, b)
    result = {}

    async def run() -> None:
        result["counts"] = await splice(far, await trio.open_tcp_stream("127.0.0.1", port))

    nursery.start_soon(run)
    return client, result


async def _receive_all(stream) -> bytes:
    data = b""
    while chunk := await stream.receive_some():
        data += chunk
    return data


async def test_a_bridge_carries_both_ways_half_closes_and_counts():
    async with stack_pair() as (a, b, nursery):
        async def server(stream) -> None:
            request = await _receive_all(stream)  # up to the client's half-close
            await stream.send_all(request[::-1] * 3)
            await stream.aclose()

        client, result = await _bridged(a, b, nursery, server)
        payload = bytes(range(256)) * 4096  # 1 MiB: the socket fills, the pending rest waits for it
        await client.send_all(payload)
        await client.send_eof()
        with trio.fail_after(10):
            answer = await _receive_all(client)
            while "counts" not in result:
                await trio.sleep(0.01)
        assert answer == payload[::-1] * 3
        assert result["counts"] == (len(payload), len(answer))


async def test_data_the_socket_takes_at_once_wakes_no_task_of_the_bridge():
    """The stack's delivery writes a request straight into the socket; the only task step per exchange is
    the socket side's wake-up for the answer (a splice of two streams takes four)."""
    async with stack_pair() as (a, b, nursery):
        async def echo(stream) -> None:
            while data := await stream.receive_some():
                await stream.send_all(data)

        client, _ = await _bridged(a, b, nursery, echo)
        await client.send_all(b"warm")
        assert await client.receive_some() == b"warm"
        await trio.testing.wait_all_tasks_blocked()
        steps = Steps()
        trio.lowlevel.add_instrument(steps)
        try:
            for n in range(10):
                await client.send_all(b"request %d" % n)
                assert await client.receive_some() == b"request %d" % n
        finally:
            trio.lowlevel.remove_instrument(steps)
        by_name = {task.name.rsplit(".", 1)[-1]: count for task, count in steps.steps.items()}
        assert by_name.get("outbound", 0) == 0
        assert by_name["inbound"] <= 10


async def test_a_socket_reset_while_it_holds_back_data_ends_the_bridge():
    """The target stops reading, so the bridge holds data the socket did not take; then it resets. The
    bridge must end (it once spun on the failure without yielding, freezing the whole process)."""
    async with stack_pair() as (a, b, nursery):
        stalled = trio.Event()
        release = trio.Event()

        async def server(stream) -> None:
            await stream.receive_some(1)
            stalled.set()
            await release.wait()
            stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            await stream.aclose()  # RST: the bridge's next send fails

        client, result = await _bridged(a, b, nursery, server)
        async with trio.open_nursery() as sending:
            async def flood() -> None:
                try:
                    while True:
                        await client.send_all(b"x" * 65536)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass

            sending.start_soon(flood)
            await stalled.wait()
            with trio.fail_after(10):
                while b.core.connections and not any(
                        c.rcv_buf for c in b.core.connections.values()):  # the bridge is backed up
                    await trio.sleep(0.05)
                await trio.sleep(0.2)
                release.set()
                while "counts" not in result:
                    await trio.sleep(0.01)
            sending.cancel_scope.cancel()
        assert result["counts"][0] > 0


async def _reset_seen_by_the_socket_peer(reset_follows: bool) -> tuple[bool, tuple]:
    """A plain client socket bridged to a stack connection whose far end resets: does that client see a
    reset (or only an end of stream)? Also returns the bridge's result."""
    async with stack_pair() as (a, b, nursery):
        listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
        user = trio.socket.socket()
        await user.connect(listener.socket.getsockname())
        accepted = LeanSocketStream(await listener.accept())
        far, near = await connected(a, b)  # far: the agent's end; near: the gateway's
        result = {}

        async def run() -> None:
            result["bridged"] = await bridge(near, accepted, 65536, reset_follows=reset_follows)

        nursery.start_soon(run)
        await trio.testing.wait_all_tasks_blocked()
        far.abort()
        with trio.fail_after(10):
            try:
                reset = await user.recv(100) != b""
            except ConnectionResetError:
                reset = True
            while "bridged" not in result:
                await trio.sleep(0.01)
        user.close()
        await listener.aclose()
        return reset, result["bridged"]


async def test_with_reset_follows_a_reset_connection_resets_the_socket_and_says_so():
    """The gateway's tcp ports: a client whose tunnel connection was reset must not take the close for a
    clean end of the exchange."""
    assert await _reset_seen_by_the_socket_peer(True) == (True, (0, 0, True))
    assert await _reset_seen_by_the_socket_peer(False) == (False, (0, 0, True))  # the agent's targets: a close



class _CountingSocket(socket.socket):
    """A socket that counts its `recv` calls and how many found nothing to read."""

    calls = would_block = 0

    def recv(self, size: int) -> bytes:
        self.calls += 1
        try:
            return super().recv(size)
        except BlockingIOError:
            self.would_block += 1
            raise


async def test_after_a_read_that_emptied_the_socket_the_bridge_waits_before_it_reads_again():
    """An agent reads each answer from its target; trying the read after it would fail with EAGAIN every
    time: one system call and one exception per request that nothing needs."""
    async with stack_pair() as (a, b, nursery):
        listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
        target = trio.socket.socket()
        await target.connect(listener.socket.getsockname())
        accepted = LeanSocketStream(await listener.accept())
        fd = accepted.bare.detach()
        accepted.bare = counting = _CountingSocket(fileno=fd)
        counting.setblocking(False)
        client, far = await connected(a, b)
        nursery.start_soon(bridge, far, accepted, 65536)
        for n in range(20):
            await client.send_all(b"request %d" % n)
            assert await target.recv(100) == b"request %d" % n
            await target.send(b"answer %d" % n)
            assert await client.receive_some() == b"answer %d" % n
        assert counting.would_block <= 1
        assert counting.calls <= 21
        target.close()
        await listener.aclose()
