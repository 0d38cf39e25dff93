"""Test links for NetStack: IP packets carried one per UDP datagram, as WireGuard carries them.

A `UdpLink` follows the link contract (`mtu`, `send_packets`), drains its socket in batches without an
await per packet, and hands each batch to `receive_packets` of the stack attached to it.
"""

from __future__ import annotations

import socket

import trio

BATCH = 128


class UdpLink:
    def __init__(self, mtu: int = 1420) -> None:
        self.mtu = mtu
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            self.sock.setsockopt(socket.SOL_SOCKET, option, 4 << 20)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.peer: tuple[str, int] | None = None
        self.dropped = 0

    @property
    def address(self) -> tuple[str, int]:
        return self.sock.getsockname()

    def send_packets(self, packets) -> None:
        sendto, peer = self.sock.sendto, self.peer
        for packet in packets:
            try:
                sendto(packet, peer)
            except OSError:
                self.dropped += 1  # a full socket buffer (or a closed one) is loss, as on a NIC

    async def run(self, receive_packets, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        recv = self.sock.recv
        task_status.started()
        try:
            while True:
                await trio.lowlevel.wait_readable(self.sock)
                batch = []
                try:
                    while len(batch) < BATCH:
                        batch.append(recv(65536))
                except BlockingIOError:
                    pass
                if batch:
                    receive_packets(batch)
        finally:
            self.sock.close()


class MemoryLink:
    """One end of an in-memory wire: what it sends reaches `receiver` on a later scheduler tick.

    `drop(packet) -> bool` loses packets on the way; `calls` and `packets` count send_packets use.
    """

    def __init__(self, mtu: int = 1420) -> None:
        self.mtu = mtu
        self.receiver = None
        self.drop = None
        self.calls = self.packets = 0

    def send_packets(self, packets) -> None:
        self.calls += 1
        self.packets += len(packets)
        if self.drop is not None:
            packets = [p for p in packets if not self.drop(p)]
        if packets and self.receiver is not None:
            trio.lowlevel.current_trio_token().run_sync_soon(self.receiver, list(packets))
