"""The Trio API: streams, listeners, UDP sockets, backpressure, cancellation, addresses, timers."""

from __future__ import annotations

import math
import os

import pytest
import trio
import trio.testing

from kakuremichi.netstack import icmp, ipv4
from kakuremichi.netstack.tcp import Config
from kakuremichi.netstack.trio_stack import EAGER_FLUSH, NetStack
from tests.netstack.links import MemoryLink
from tests.netstack.pair import A, B, Steps, connected, stack_pair


async def test_streams_pass_trios_half_closeable_stream_conformance_suite():
    async with stack_pair(Config(send_buffer=8192, receive_buffer=8192)) as (a, b, _):
        listener = b.listen(80)

        async def make_pair():
            client = await a.open_tcp_stream(B, 80)
            return client, await listener.accept()

        async def make_clogged_pair():
            client, server = await make_pair()
            async with trio.open_nursery() as nursery:  # fill both windows and both send buffers
                nursery.start_soon(client.send_all, b"x" * 100_000)
                nursery.start_soon(server.send_all, b"x" * 100_000)
                await trio.testing.wait_all_tasks_blocked()
                nursery.cancel_scope.cancel()
            return client, server

        await trio.testing.check_half_closeable_stream(make_pair, make_clogged_pair)


async def test_slow_reader_makes_send_all_block_with_bounded_buffers():
    config = Config(send_buffer=64 * 1024, receive_buffer=64 * 1024)
    async with stack_pair(config) as (a, b, _):
        client, server = await connected(a, b)
        payload = os.urandom(1 << 20)
        sent = trio.Event()

        async def send():
            await client.send_all(payload)
            sent.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(send)
            await trio.sleep(0.3)
            assert not sent.is_set()  # nobody reads: the window closed and the send buffer filled
            assert len(client.connection.snd_buf) <= config.send_buffer
            assert len(server.connection.rcv_buf) <= config.receive_buffer + 1024
            assert server.connection.rcv_adv - server.connection.rcv_nxt < 1500
            got = bytearray()
            while len(got) < len(payload):
                got += await server.receive_some()
        assert got == payload and sent.is_set()


async def test_cancelled_receive_leaves_the_stream_usable():
    async with stack_pair() as (a, b, _):
        client, server = await connected(a, b)
        with trio.move_on_after(0.05) as scope:
            await server.receive_some()
        assert scope.cancelled_caught
        await client.send_all(b"still here")
        assert await server.receive_some() == b"still here"


async def test_cancelled_connect_leaves_nothing_behind():
    async with stack_pair() as (a, b, _):
        a.link.drop = lambda packet: True  # a black hole
        with trio.move_on_after(0.5):
            await a.open_tcp_stream(B, 80)
        assert not a.core.connections


async def test_connect_errors_are_oserrors():
    async with stack_pair(Config(syn_retries=1, initial_rto=0.05)) as (a, b, _):
        with pytest.raises(ConnectionRefusedError):
            await a.open_tcp_stream(B, 81)
        a.link.drop = lambda packet: True
        with pytest.raises(TimeoutError):
            await a.open_tcp_stream(B, 80)


async def test_peer_reset_breaks_the_stream():
    async with stack_pair() as (a, b, _):
        client, server = await connected(a, b)
        client.abort()
        with pytest.raises(trio.BrokenResourceError):
            await server.receive_some()
        with pytest.raises(trio.BrokenResourceError):
            await server.send_all(b"x")


async def test_output_is_batched_per_scheduler_turn_in_bursts_of_eager_flush():
    async with stack_pair() as (a, b, _):
        streams = [await connected(a, b, port=1000 + i) for i in range(3 * EAGER_FLUSH)]
        calls, packets = a.link.calls, a.link.packets
        async with trio.open_nursery() as nursery:
            for client, _ in streams:
                nursery.start_soon(client.send_all, b"x" * 3000)
        await trio.testing.wait_all_tasks_blocked()
        assert a.link.packets - packets >= 2 * len(streams)  # at least two segments per stream
        # ... leaving together, but not all held to the end of the turn: the peer gets to work sooner
        assert 3 <= a.link.calls - calls <= 5


async def test_udp_sockets_exchange_datagrams_and_fragment_large_ones():
    async with stack_pair() as (a, b, _):
        server = b.udp_socket(5353)
        client = a.udp_socket()
        await client.sendto(b"hello", (B, 5353))
        data, source = await server.recvfrom()
        assert data == b"hello" and source == client.local_address
        big = os.urandom(9000)  # larger than the MTU: sent as fragments, reassembled on arrival
        await server.sendto(big, source)
        assert (await client.recvfrom())[0] == big
        client.close()
        with pytest.raises(trio.ClosedResourceError):
            await client.recvfrom()


async def test_addresses_change_at_runtime_without_dropping_other_connections():
    extra = "10.60.1.2"
    async with stack_pair(Config(syn_retries=1, initial_rto=0.05), b_addresses=(B, extra)) as (a, b, _):
        keep, keep_server = await connected(a, b)
        lose, lose_server = await connected(a, b, port=81, address=extra)
        b.remove_address(extra)
        with pytest.raises(trio.BrokenResourceError):
            await lose.receive_some()  # the peer learnt of it through an RST
        with pytest.raises(trio.BrokenResourceError):
            await lose_server.receive_some()
        await keep.send_all(b"unaffected")
        assert await keep_server.receive_some() == b"unaffected"
        with pytest.raises(TimeoutError):  # the address is gone: nothing answers for it any more
            await a.open_tcp_stream(extra, 80)
        assert b.core.drops["not-for-us"] == 2
        b.add_address("10.60.2.2")
        fresh, fresh_server = await connected(a, b, port=82, address="10.60.2.2")
        await fresh.send_all(b"new address")
        assert await fresh_server.receive_some() == b"new address"


async def test_keepalive_detects_a_vanished_peer_on_the_fake_clock(autojump_clock):
    async with stack_pair() as (a, b, _):
        client, server = await connected(a, b)
        client.set_keepalive(idle=60, interval=5, count=3)
        started = trio.current_time()
        b.link.drop = lambda packet: True  # the peer's replies stop
        with pytest.raises(trio.BrokenResourceError):
            await client.receive_some()
        assert trio.current_time() - started == pytest.approx(60 + 3 * 5, abs=0.5)
        assert isinstance(client.connection.error, TimeoutError)


async def test_stopping_the_stack_resets_its_connections():
    link_a, link_b = MemoryLink(), MemoryLink()
    a, b = NetStack(link_a, [A]), NetStack(link_b, [B])
    link_a.receiver, link_b.receiver = b.receive_packets, a.receive_packets
    async with trio.open_nursery() as outer:
        await outer.start(b.run)
        async with trio.open_nursery() as inner:
            await inner.start(a.run)
            client, server = await connected(a, b)
            with pytest.raises(RuntimeError, match="already running"):
                await a.run()
            inner.cancel_scope.cancel()
        with pytest.raises(trio.BrokenResourceError):
            await client.receive_some()
        with pytest.raises(trio.BrokenResourceError):
            await server.receive_some()  # the peer got an RST
        assert isinstance(server.connection.error, ConnectionResetError)
        outer.cancel_scope.cancel()


async def test_pinging_the_stack():
    async with stack_pair() as (a, b, _):
        replies = []
        b.link.receiver = lambda packets: replies.extend(filter(None, map(icmp.parse_echo_reply, packets)))
        a.link.send_packets([icmp.echo_request(ipv4.ipaddress.IPv4Address(A), ipv4.ipaddress.IPv4Address(B), 7, 1,
                                               b"ping")])
        await trio.testing.wait_all_tasks_blocked()
        (reply,) = replies
        assert str(reply.source) == B and reply.identifier == 7 and reply.sequence == 1


def test_opening_before_run_says_what_to_do():
    stack = NetStack(MemoryLink(), [A])
    with pytest.raises(RuntimeError, match="NetStack.run"):
        stack.listen(80)


async def test_quiet_and_open_tells_at_once_whether_a_kept_alive_connection_is_fit():
    async with stack_pair() as (a, b, _):
        client, server = await connected(a, b)
        assert client.quiet_and_open
        await server.send_all(b"x")  # something the client never asked for
        with trio.fail_after(2):
            while client.quiet_and_open:
                await trio.sleep(0.01)
        assert await client.receive_some() == b"x"
        assert client.quiet_and_open
        await server.aclose()  # the peer closes while the connection sits idle
        with trio.fail_after(2):
            while client.quiet_and_open:
                await trio.sleep(0.01)


async def test_a_read_that_waits_yields_to_the_scheduler_once_by_its_park():
    """An awaited answer (every request's) costs the reading task one wait, not a checkpoint and a wait; a
    read that finds data still yields once, so it stays a checkpoint."""
    async with stack_pair() as (a, b, _):
        client, server = await connected(a, b)
        steps, got, tasks = Steps(), [], []

        async def read() -> None:
            tasks.append(trio.lowlevel.current_task())
            got.append(await server.receive_some())

        trio.lowlevel.add_instrument(steps)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(read)
                await trio.testing.wait_all_tasks_blocked()
                await client.send_all(b"answer")
            await client.send_all(b"ready")
            await trio.testing.wait_all_tasks_blocked()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(read)
        finally:
            trio.lowlevel.remove_instrument(steps)
        assert got == [b"answer", b"ready"]
        assert steps.steps[tasks[0]] == 2  # its start, parked at once; its wake with the data
        assert steps.steps[tasks[1]] == 2  # its start; after the checkpoint that follows taking the data


async def test_a_stack_stopping_with_its_nursery_cancels_a_waiting_accept_and_recvfrom_rather_than_fail_them():
    """The agent's stop cancels the stack and its servers together; the stack closes its listeners and
    sockets on the way out, which may wake their tasks before the cancel reaches them."""
    async with stack_pair() as (a, b, _):
        listener, socket = b.listen(80), b.udp_socket(53)
        failures = []

        async def waits(call) -> None:
            try:
                await call()
            except trio.ClosedResourceError as exc:
                failures.append(exc)

        with trio.CancelScope() as scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(waits, listener.accept)
                nursery.start_soon(waits, socket.recvfrom)
                await trio.testing.wait_all_tasks_blocked()
                b._shut_down()  # wakes both waiting tasks ...
                scope.cancel()  # ... in the same turn as the cancel
        assert failures == []


async def test_the_timer_task_sleeps_in_one_cancel_scope_until_a_timer_fires(mock_clock):
    """A cancel scope per sleep cost more than the sleep: the scope lives until its deadline, the next timer,
    passes, and only moves with it."""
    async with stack_pair() as (a, b, _):
        client, server = await connected(a, b)
        scope = b._wakeup
        for _ in range(5):  # the fake clock stands still: no timer can fire, however many turns this takes
            await client.send_all(b"ping")
            assert await server.receive_some() == b"ping"
            await server.send_all(b"pong")
            assert await client.receive_some() == b"pong"
        assert b._wakeup is scope and scope.deadline < math.inf  # one scope, set to the next timer
        mock_clock.jump(10)  # past every timer
        await trio.testing.wait_all_tasks_blocked()
        assert b._wakeup is not scope


async def test_a_read_that_queues_nothing_for_the_peer_wakes_no_timer_task(mock_clock):
    """A request's read leaves the window wide open: there is no update to send, so the stack's timer task
    (which flushes what user calls queue) sleeps on. Without the check it took a step per read."""
    async with stack_pair() as (a, b, _):
        client, server = await connected(a, b)
        await server.send_all(b"hello")  # carries the server's full window: the SYN's could not (unscaled)
        assert await client.receive_some() == b"hello"
        await client.send_all(b"request")
        await trio.testing.wait_all_tasks_blocked()
        timer_task, steps = b._sleeper, Steps()
        assert timer_task is not None  # asleep until the next timer
        trio.lowlevel.add_instrument(steps)
        try:
            assert await server.receive_some() == b"request"
            await trio.testing.wait_all_tasks_blocked()
        finally:
            trio.lowlevel.remove_instrument(steps)
        assert steps.steps.get(timer_task, 0) == 0
        await server.send_all(b"answer")  # a call that does queue a segment still gets it flushed
        assert await client.receive_some() == b"answer"
