"""Joining two byte streams both ways, the core of every forwarder (agent, `wg forward`/`expose`).

Each direction runs until EOF and then half-closes the other side (`send_eof`), so protocols that
finish a request with a shutdown still work; when one direction fails, the whole pipe ends and
both streams are closed, so nothing is left half-open. `contained` runs one connection's handler
among many.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import trio

from kakuremichi.bridge import bridge
from kakuremichi.faults import Contained
from kakuremichi.leansocket import LeanSocketStream
from kakuremichi.netstack.streams import TcpStream

CHUNK = 1 << 18  # per read: a bulk transfer wakes each side a quarter as often as with 64 KiB


async def contained(handle: Callable[[], Awaitable[object]], stream: trio.abc.AsyncResource,
                    faults: Contained, **fields: object) -> None:
    """`handle()`, then close `stream`; whatever escapes the handler is counted and logged by `faults` (at
    most once per interval) and ends that connection only: connections share a nursery, which an exception
    would cancel with every other connection in it."""
    try:
        await handle()
    except Exception as exc:
        faults.record(exc, **fields)
    finally:
        await trio.aclose_forcefully(stream)


_PLAIN_SOCKETS = (trio.SocketStream, LeanSocketStream)


def _lean(stream: trio.SocketStream | LeanSocketStream) -> LeanSocketStream:
    return stream if isinstance(stream, LeanSocketStream) else LeanSocketStream(stream)


async def splice(a: trio.abc.Stream, b: trio.abc.Stream, chunk: int = CHUNK) -> tuple[int, int]:
    """Copy a→b and b→a until both directions finish; returns (bytes a→b, bytes b→a). A userspace TCP
    connection and a plain OS socket are bridged without a task per direction (kakuremichi.bridge)."""
    if isinstance(a, TcpStream) and isinstance(b, _PLAIN_SOCKETS):
        a_to_b, b_to_a, _ = await bridge(a, _lean(b), chunk)
        return a_to_b, b_to_a
    if isinstance(b, TcpStream) and isinstance(a, _PLAIN_SOCKETS):
        b_to_a, a_to_b, _ = await bridge(b, _lean(a), chunk)
        return a_to_b, b_to_a
    counts = [0, 0]

    async def one_way(src: trio.abc.Stream, dst: trio.abc.Stream, slot: int) -> None:
        while True:
            data = await src.receive_some(chunk)
            if not data:
                break
            await dst.send_all(data)
            counts[slot] += len(data)
        if isinstance(dst, trio.abc.HalfCloseableStream):
            await dst.send_eof()
        else:
            await dst.aclose()

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(one_way, a, b, 0)
            nursery.start_soon(one_way, b, a, 1)
    except* (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass  # one side reset or vanished: the other gets closed below
    finally:
        with trio.CancelScope(shield=True):
            await trio.aclose_forcefully(a)
            await trio.aclose_forcefully(b)
    return counts[0], counts[1]
