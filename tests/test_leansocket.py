"""kakuremichi.leansocket: Trio's stream contract kept, with one scheduler step per call."""

from __future__ import annotations

import sys

import trio
import trio.testing

from kakuremichi.leansocket import LeanSocketListener, LeanSocketStream


async def _pair() -> tuple[LeanSocketStream, LeanSocketStream]:
    listener = LeanSocketListener((await trio.open_tcp_listeners(0, host="127.0.0.1"))[0])
    port = listener.socket.getsockname()[1]
    client = LeanSocketStream(await trio.open_tcp_stream("127.0.0.1", port))
    server = await listener.accept()
    await listener.aclose()
    return client, server


async def test_lean_streams_pass_trios_half_closeable_stream_conformance_suite():
    async def clogged_pair():
        client, server = await _pair()
        for stream in (client, server):  # both ways full, so the suite can wait on either
            try:
                while True:
                    stream.bare.send(b"x" * 65536)
            except BlockingIOError:
                pass
        return client, server

    await trio.testing.check_half_closeable_stream(_pair, clogged_pair)


async def _calls_per_exchange(client, server, exchanges: int = 50) -> float:
    """Python function calls (any task's) per request and answer between the two streams: how much
    interpreter work the stream adds, counted rather than timed."""
    calls = 0

    def count(frame, event, arg) -> None:
        nonlocal calls
        if event == "call":
            calls += 1

    async def answer() -> None:
        for _ in range(exchanges):
            await server.send_all(await server.receive_some())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(answer)
        await trio.testing.wait_all_tasks_blocked()
        sys.setprofile(count)
        try:
            for _ in range(exchanges):
                await client.send_all(b"request")
                await client.receive_some()
        finally:
            sys.setprofile(None)
    return calls / exchanges


async def test_an_exchange_runs_far_fewer_python_calls_than_through_trios_streams():
    lean = await _pair()
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    plain_client = await trio.open_tcp_stream("127.0.0.1", listener.socket.getsockname()[1])
    plain = (plain_client, await listener.accept())
    lean_calls = await _calls_per_exchange(*lean)
    trio_calls = await _calls_per_exchange(*plain)
    assert lean_calls < 0.75 * trio_calls  # 105 against 164 when written
    for stream in (*lean, *plain, listener):
        await stream.aclose()
