"""Our stack to our stack through a UDP relay that drops 5 %, reorders and duplicates packets."""

from __future__ import annotations

import hashlib
import os

import trio

from kakuremichi.netstack.tcp import Config
from kakuremichi.netstack.trio_stack import NetStack
from tests.netstack.links import UdpLink
from tests.udp_relay import ImpairedRelay

SIZE = 20 * 1024 * 1024
CHUNK = 256 * 1024


async def test_20_mb_survive_loss_reordering_and_duplication():
    link_a, link_b = UdpLink(), UdpLink()
    relay = ImpairedRelay(link_a.address, link_b.address, loss=0.05, duplicate=0.05, reorder=0.1, seed=3)
    relay_address = await relay.bind()
    link_a.peer = link_b.peer = relay_address
    config = Config()
    a = NetStack(link_a, ["10.50.0.1"], config=config)
    b = NetStack(link_b, ["10.50.0.2"], config=config)
    payload = os.urandom(SIZE)
    arrivals: list[float] = []
    digest = hashlib.sha256()

    async def sink(stream):
        while data := await stream.receive_some():
            digest.update(data)
            arrivals.append(trio.current_time())
        await stream.send_all(digest.digest())
        await stream.aclose()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(relay.run)
        for link, stack in ((link_a, a), (link_b, b)):
            await nursery.start(link.run, stack.receive_packets)
            await nursery.start(stack.run)
        await nursery.start(b.serve_tcp, sink, 9000)
        with trio.fail_after(120):
            stream = await a.open_tcp_stream("10.50.0.2", 9000)
            started = trio.current_time()
            for offset in range(0, SIZE, CHUNK):
                await stream.send_all(payload[offset:offset + CHUNK])
            await stream.send_eof()
            reply = b""
            while part := await stream.receive_some():
                reply += part
            elapsed = trio.current_time() - started
            await stream.aclose()
        nursery.cancel_scope.cancel()

    assert reply == hashlib.sha256(payload).digest()
    assert relay.dropped > 500 and relay.duplicated > 500 and relay.reordered > 1000
    # The longest silence is what at most three back-to-back losses of one retransmission cost. The RTO
    # tracks the measured RTT, which a loaded CI machine inflates: bound it by RFC 6298's 1 s floor, not
    # by our (lower) configured minimum.
    stall = max(later - earlier for earlier, later in zip([started] + arrivals, arrivals))
    rto = max(config.min_rto, 1.0)
    assert stall < sum(rto * 2 ** i for i in range(3)), f"stalled for {stall:.2f} s"
    print(f"\n20 MB through 5 % loss: {SIZE / elapsed / 1e6:.1f} MB/s, longest stall {stall * 1000:.0f} ms, "
          f"relay dropped {relay.dropped}, duplicated {relay.duplicated}, reordered {relay.reordered}")
