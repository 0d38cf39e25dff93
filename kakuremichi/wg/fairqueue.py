"""Received datagrams waiting for the device, served round-robin by sender.

The kernel's socket buffer is one FIFO: a tenant flooding the interface puts thousands of its datagrams
ahead of another tenant's one, which then waits for all of them to be decrypted first. The driver
instead reads the socket ahead (cheap: a receive and a copy) into one queue per sender, and hands the
device at most `quantum` datagrams of each sender per round, so every sender's next datagram is handled
within a turn however much another one sends. A sender whose queue is full loses its newest datagrams
(like a full NIC ring); the total waiting is bounded too. Sans-IO: no sockets, no clock.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable

QUANTUM = 16  # datagrams of one sender handed to the device per round
# Datagrams of one sender waiting at most: about what the socket's buffer held before it was read ahead,
# so a single fast sender (a bulk download) that the device falls behind loses no more than it used to.
SENDER_QUEUE = 4096
MAX_WAITING = 16384  # datagrams waiting in all; the driver stops reading the socket ahead past it


class FairQueue:
    def __init__(self, *, quantum: int = QUANTUM, sender_queue: int = SENDER_QUEUE,
                 max_waiting: int = MAX_WAITING) -> None:
        self.quantum, self.sender_queue, self.max_waiting = quantum, sender_queue, max_waiting
        self._queues: dict[Hashable, deque] = {}  # insertion order is the round-robin order
        self.waiting = 0
        self.dropped = 0  # datagrams refused because their sender's queue was full

    @property
    def full(self) -> bool:
        return self.waiting >= self.max_waiting

    def __len__(self) -> int:
        return self.waiting

    def put(self, sender: Hashable, items: list) -> int:
        """Queue `items` (one datagram, or a coalesced run of them) from `sender`; returns how many were
        dropped because that sender's queue was full."""
        queue = self._queues.get(sender)
        if queue is None:
            queue = self._queues[sender] = deque()
        room = self.sender_queue - len(queue)
        kept = items if len(items) <= room else items[:room]
        queue.extend(kept)
        self.waiting += len(kept)
        dropped = len(items) - len(kept)
        self.dropped += dropped
        return dropped

    def take(self, limit: int) -> list:
        """Up to `limit` items, `quantum` per sender per round, in round-robin order. A sender served
        now goes to the back of the order, so the next turn starts with those not served yet."""
        taken: list = []
        queues = self._queues
        while queues and len(taken) < limit:
            for sender in list(queues):
                queue = queues.pop(sender)
                for _ in range(min(self.quantum, len(queue), limit - len(taken))):
                    taken.append(queue.popleft())
                if queue:
                    queues[sender] = queue  # back of the order
                if len(taken) >= limit:
                    break
        self.waiting -= len(taken)
        return taken
