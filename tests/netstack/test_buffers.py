"""The TCP send and receive buffers: bytes in and out in order, however the appends and reads are cut."""

from __future__ import annotations

import os
import tracemalloc

from kakuremichi.netstack.receivebuffer import ReceiveBuffer
from kakuremichi.netstack.sendbuffer import COMPACT_MIN, SendBuffer

DATA = os.urandom(5 * COMPACT_MIN)


def test_receive_buffer_reads_across_and_inside_payloads_in_order():
    buffer = ReceiveBuffer()
    packet = bytes(DATA[960:2500])
    buffer += memoryview(packet)[40:]  # a view into an immutable packet is kept, not copied
    mutable = bytearray(DATA[3000:3100])
    buffer += mutable
    mutable[:] = bytes(100)  # a mutable buffer reused by its owner must not change what was received
    buffer += b""
    assert len(buffer) == 1600
    assert buffer.take(1000) == DATA[1000:2000]
    assert buffer.take(600) == DATA[2000:2500] + DATA[3000:3100]
    assert not buffer and buffer.take(10) == b""


def test_tiny_payloads_cost_the_receive_buffer_their_bytes_not_a_packet_each():
    packets = [bytes(41) for _ in range(1000)]  # one-byte segments: a 40-byte header each
    buffer = ReceiveBuffer()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(100):
            for packet in packets:
                buffer += memoryview(packet)[40:]
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(buffer) == 100_000 and held < 200_000  # a view per payload would be about 20 MB
    assert buffer.take(1 << 20) == bytes(100_000)


def test_send_buffer_indexes_by_sequence_number_while_acknowledged_bytes_go():
    buffer = SendBuffer(1000)
    for offset in range(0, len(DATA), 7000):
        buffer.append(DATA[offset:offset + 7000])
    assert (buffer.start, buffer.end, len(buffer)) == (1000, 1000 + len(DATA), len(DATA))
    acked = 0
    for step in (10, 3 * COMPACT_MIN, 5, COMPACT_MIN):  # the second and last compact what is left
        assert buffer.acknowledge(buffer.start + step) == step
        acked += step
        with buffer.view() as view:
            assert view == DATA[acked:] and buffer.start == 1000 + acked
    buffer.append(b"tail")  # into the room the compactions left
    with buffer.view() as view:
        assert view == DATA[acked:] + b"tail" and buffer.end == 1000 + len(DATA) + 4
    assert buffer.acknowledge(buffer.end - 4) == len(DATA) - acked
    with buffer.view() as view:
        assert view == b"tail"
    assert buffer.acknowledge(buffer.start) == 0 and buffer.acknowledge(buffer.end + 99) == 4
    assert len(buffer) == 0 and buffer.start == buffer.end == 1000 + len(DATA) + 4
    buffer.append(b"more")
    with buffer.view() as view:
        assert view == b"more"
