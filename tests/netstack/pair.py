"""Two NetStacks joined in memory, for tests of the Trio API and of what is built on it (the bridge), and an
instrument counting the scheduler steps their tasks take."""

from __future__ import annotations

from contextlib import asynccontextmanager

import trio

from kakuremichi.netstack.tcp import Config
from kakuremichi.netstack.trio_stack import NetStack
from tests.netstack.links import MemoryLink

A, B = "10.60.0.1", "10.60.0.2"


@asynccontextmanager
async def stack_pair(config: Config | None = None, *, b_addresses=(B,)):
    link_a, link_b = MemoryLink(), MemoryLink()
    a = NetStack(link_a, [A], config=config)
    b = NetStack(link_b, list(b_addresses), config=config)
    link_a.receiver, link_b.receiver = b.receive_packets, a.receive_packets
    async with trio.open_nursery() as nursery:
        await nursery.start(a.run)
        await nursery.start(b.run)
        yield a, b, nursery
        nursery.cancel_scope.cancel()


async def connected(a: NetStack, b: NetStack, port: int = 80, address: str = B):
    listener = b.listen(port)
    client = await a.open_tcp_stream(address, port)
    server = await listener.accept()
    return client, server


class Steps(trio.abc.Instrument):
    """Counts the scheduler steps each task runs: every yield to the scheduler costs one more."""

    def __init__(self) -> None:
        self.steps: dict[trio.lowlevel.Task, int] = {}

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self.steps[task] = self.steps.get(task, 0) + 1
