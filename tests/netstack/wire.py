"""Two sans-IO stacks joined by a programmable wire under a fake clock, for deterministic TCP tests.

Packets move only when the test calls `deliver()`/`advance()`; `drop` decides per packet what the wire
loses, and every packet that crossed (or was lost) is recorded with its time, so tests can assert on
exactly what TCP sent and when.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from kakuremichi.netstack import ipv4, tcp
from kakuremichi.netstack.stack import Stack
from kakuremichi.netstack.tcp import Config

A, B = "10.0.0.1", "10.0.0.2"


@dataclass
class Sent:
    time: float
    sender: str  # "a" or "b"
    packet: bytes
    dropped: bool

    @property
    def segment(self) -> tcp.Segment:
        return tcp.parse(ipv4.parse(self.packet))

    @property
    def flags(self) -> int:
        return self.segment.flags


class Wire:
    def __init__(self, config_a: Config | None = None, config_b: Config | None = None, *, mtu: int = 1420,
                 mtu_b: int | None = None) -> None:
        self.a = Stack([A], mtu, config_a or Config())
        self.b = Stack([B], mtu_b or mtu, config_b or Config())
        self.now = 0.0
        self.drop: Callable[[Sent], bool] = lambda sent: False
        self.log: list[Sent] = []

    def collect(self) -> None:
        """Collect every connection, as the layer above does after its user calls (the tests call a
        connection's `send`, `receive`, `close`... directly)."""
        for stack in (self.a, self.b):
            for connection in list(stack.connections.values()):
                stack.collect(connection)

    def deliver(self) -> None:
        """Move packets both ways until both stacks are quiet (no time passes)."""
        self.collect()
        for _ in range(10_000):
            moved = False
            for name, source, target in (("a", self.a, self.b), ("b", self.b, self.a)):
                packets = source.take_outgoing()
                if not packets:
                    continue
                moved = True
                kept = []
                for packet in packets:
                    sent = Sent(self.now, name, packet, False)
                    sent.dropped = self.drop(sent)
                    self.log.append(sent)
                    if not sent.dropped:
                        kept.append(packet)
                target.receive(kept, self.now)
            if not moved:
                return
        raise AssertionError("the stacks never went quiet")

    def poll(self, stack: Stack) -> None:
        """Let one stack send what user calls queued, delivering nothing yet."""
        self.collect()
        stack.poll(self.now)

    def flush(self) -> None:
        """Let both stacks send what user calls queued, then deliver."""
        self.collect()
        self.a.poll(self.now)
        self.b.poll(self.now)
        self.deliver()

    def advance(self, seconds: float) -> None:
        """Let `seconds` of fake time pass, firing every timer on the way."""
        end = self.now + seconds
        while True:
            deadlines = [d for d in (self.a.next_deadline(), self.b.next_deadline()) if d is not None]
            step = min(deadlines, default=end)
            if step > end:
                break
            self.now = max(self.now, step)
            self.flush()
            if step == end:
                break
        self.now = end
        self.flush()

    def connect(self, port: int = 80, backlog: int = 8):
        """An established pair (client on a, server on b)."""
        listener = self.b.listen(port, backlog=backlog)
        client = self.a.connect(B, port, self.now)
        self.flush()
        server = listener.accept()
        assert server is not None and client.state == tcp.State.ESTABLISHED
        return client, server

    def sent_by(self, name: str, *, data: bool | None = None, since: float = -1.0) -> list[Sent]:
        out = [s for s in self.log if s.sender == name and s.time >= since]
        if data is not None:
            out = [s for s in out if bool(s.segment.payload) == data]
        return out


def pump(wire: Wire, sender: tcp.Connection, receiver: tcp.Connection, data: bytes, *,
         max_seconds: float = 600.0, step: float = 0.01) -> bytes:
    """Push `data` from sender to receiver, reading as it comes; returns what arrived."""
    got = bytearray()
    offset = 0
    deadline = wire.now + max_seconds
    while len(got) < len(data):
        if offset < len(data):
            offset += sender.send(data[offset:])
        wire.flush()
        got += receiver.receive(1 << 30)
        if len(got) < len(data):
            wire.advance(step)
        assert wire.now < deadline, f"stalled at {len(got)} of {len(data)} bytes"
    return bytes(got)
