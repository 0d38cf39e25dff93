"""Scenario: the sans-IO TCP core alone. Two Stacks in one process hand a bulk transfer to each other under
a fake clock, without loss and with 1 % of packets lost; the figures are CPU seconds (process_time, both
ends included) per GiB, so they compare two versions of the core on a busy machine, where wall time
does not."""

from __future__ import annotations

import random
import time

from kakuremichi.netstack.stack import Stack

CHUNK = bytes(1 << 20)


def _transfer(size: int, loss: float) -> float:
    """CPU seconds to move `size` bytes from one stack to the other, losing `loss` of the packets."""
    a = Stack(["10.0.0.1"], 1420, link_authenticated=True)
    b = Stack(["10.0.0.2"], 1420, link_authenticated=True)
    lottery = random.Random(7)
    now = 0.0

    def move() -> None:
        while True:
            moved = False
            for source, target in ((a, b), (b, a)):
                packets = source.take_outgoing()
                if packets:
                    moved = True
                    target.receive([p for p in packets if lottery.random() >= loss] if loss else packets, now)
            if not moved:
                return

    listener = b.listen(80)
    client = a.connect("10.0.0.2", 80, now)
    a.poll(now)
    move()
    server = listener.accept()
    received = 0
    start = time.process_time()
    while received < size:
        if client.send_space:
            client.send(CHUNK)
            a.collect(client)
        a.poll(now)
        b.poll(now)
        move()
        count = len(server.receive(1 << 30))
        b.collect(server)
        received += count
        if not count or loss:
            now += 0.001
            a.poll(now)
            b.poll(now)
            move()
    return time.process_time() - start


def test_bulk_transfer_cpu_per_gib(record):
    lossless = min(_transfer(64 << 20, 0.0) for _ in range(3)) * 16
    lossy = min(_transfer(32 << 20, 0.01) for _ in range(3)) * 32
    print(f"tcp core: {lossless:.2f} CPU s/GiB lossless, {lossy:.2f} CPU s/GiB at 1 % loss")
    record("tcp_core", lossless_cpu_s_per_gib=lossless, lossy_cpu_s_per_gib=lossy)
