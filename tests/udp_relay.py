"""A UDP relay on 127.0.0.1 that impairs traffic like a bad network: loss, reordering, duplication, delay.

Stands in for `tc netem`, which this environment lacks. Both sides send to the relay; it forwards every
datagram from one side to the other.
"""

from __future__ import annotations

import random
import socket

import trio


class ImpairedRelay:
    def __init__(self, side_a: tuple[str, int], side_b: tuple[str, int], *, loss: float = 0.0, duplicate: float = 0.0, reorder: float = 0.0,
                 delay: float = 0.0, jitter: float = 0.0, seed: int = 1) -> None:
        self.loss, self.duplicate, self.reorder = loss, duplicate, reorder
        self.delay, self.jitter = delay, jitter
        self.random = random.Random(seed)
        self.sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for option in (getattr(socket, "SO_RCVBUFFORCE", socket.SO_RCVBUF), socket.SO_RCVBUF):
            try:  # the relay is a test fixture: its own overflow must not pose as the network's loss
                self.sock.setsockopt(socket.SOL_SOCKET, option, 8 << 20)
                break
            except OSError:
                continue
        self.sides = (side_a, side_b)
        self.forwarded = self.dropped = self.duplicated = self.reordered = 0
        self._held: tuple[bytes, tuple] | None = None

    async def bind(self) -> tuple[str, int]:
        await self.sock.bind(("127.0.0.1", 0))
        return self.sock.getsockname()

    @property
    def address(self) -> tuple[str, int]:
        return self.sock.getsockname()

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        if self.sock.getsockname()[1] == 0:
            await self.bind()
        async with trio.open_nursery() as nursery:
            task_status.started(self.address)
            while True:
                data, source = await self.sock.recvfrom(65536)
                if source not in self.sides:
                    continue
                target = self.sides[1] if source == self.sides[0] else self.sides[0]
                self._impair(nursery, data, target)

    def _impair(self, nursery, data: bytes, target) -> None:
        r = self.random
        if r.random() < self.loss:
            self.dropped += 1
            return
        copies = 2 if r.random() < self.duplicate else 1
        self.duplicated += copies - 1
        if self._held is None and r.random() < self.reorder:
            self._held = (data, target)  # overtaken by the next datagram
            self.reordered += 1
            return
        for _ in range(copies):
            self._emit(nursery, data, target)
        if self._held is not None:
            held, self._held = self._held, None
            self._emit(nursery, *held)

    def _emit(self, nursery, data: bytes, target) -> None:
        self.forwarded += 1
        wait = self.delay + self.random.uniform(0, self.jitter) if (self.delay or self.jitter) else 0
        if wait:
            nursery.start_soon(self._later, wait, data, target)
        else:
            self._sendto(data, target)

    async def _later(self, wait: float, data: bytes, target) -> None:
        await trio.sleep(wait)
        self._sendto(data, target)

    def _sendto(self, data: bytes, target) -> None:
        try:
            self.sock._sock.sendto(data, target)
        except BlockingIOError:
            self.dropped += 1  # relay's own buffer full: a drop, as on a real link
