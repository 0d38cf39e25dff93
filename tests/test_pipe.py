import trio
import trio.testing

from kakuremichi.pipe import splice


async def test_splice_copies_both_ways_and_propagates_half_close():
    client, near = trio.testing.memory_stream_pair()
    far, server = trio.testing.memory_stream_pair()
    result = {}

    async def run():
        result["counts"] = await splice(near, far)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run)
        await client.send_all(b"request")
        await client.send_eof()  # half-close: the server must see EOF but still be able to answer
        got = b""
        while chunk := await server.receive_some():
            got += chunk
        assert got == b"request"
        await server.send_all(b"response")
        await server.aclose()
        answer = b""
        while chunk := await client.receive_some():
            answer += chunk
        assert answer == b"response"
    assert result["counts"] == (7, 8)


async def test_splice_closes_both_when_one_side_breaks():
    client, near = trio.testing.memory_stream_pair()
    far_a, far_b = trio.testing.lockstep_stream_pair()

    async def run():
        await splice(near, far_a)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run)
        await far_b.aclose()  # the far side vanishes
        await client.send_all(b"x")
        with trio.fail_after(2):
            while await client.receive_some():
                pass  # must reach EOF/close instead of hanging
