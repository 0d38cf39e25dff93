"""A connected UDP socket per peer beside the interface's own, so the kernel queues each peer's datagrams apart.

A UDP socket's receive buffer is one FIFO: a peer flooding the interface fills it, and every other peer's
datagrams wait behind thousands of its own, or are dropped by the kernel before the driver's fair queue
sees them. On Linux, sockets bound to the same address and port with SO_REUSEPORT and connected to a
peer's address receive exactly that address's datagrams (the kernel prefers the connected match), and the
interface's own socket keeps the rest (new peers, roaming ones, strangers). The driver reads them all
through one epoll, a few datagrams of each per round, so a flood fills only its own buffer, and what
overflows is dropped by the kernel at no cost to the others. Sending stays on the interface's socket.

Joining the port needs the interface's socket bound with SO_REUSEPORT too; `bind_shared` first binds the
port without it, so that a port another socket holds is refused as usual. The kernel admits to a port's
group only sockets of the same user.
"""

from __future__ import annotations

import resource
import select
import socket
import sys

MAX_SOCKETS = 4096  # peers with a socket of their own at most; the rest share the interface's
PEER_BUFFER = 1 << 20  # receive buffer of one peer's socket


def possible() -> bool:
    return sys.platform == "linux" and hasattr(socket, "SO_REUSEPORT") and hasattr(select, "epoll")


def bind_shared(sock: socket.socket, address: tuple) -> None:
    """Bind `sock` to `address` so that peer sockets can join its port, refusing a port already taken."""
    probe = socket.socket(sock.family, socket.SOCK_DGRAM)
    try:
        if sock.family == socket.AF_INET6:
            probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        probe.bind(address)  # EADDRINUSE here, as without sharing, if anything holds the port
        address = probe.getsockname()  # a port chosen by the kernel for port 0
    finally:
        probe.close()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(address)


class PeerSockets:
    """The interface's socket and one connected socket per peer address, polled together."""

    def __init__(self, main: socket.socket, *, configure=lambda sock: None, limit: int | None = None) -> None:
        self.main = main
        self._configure = configure  # per-socket options the driver wants on each (UDP GRO)
        self._address = main.getsockname()
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        self.limit = limit if limit is not None else max(0, min(MAX_SOCKETS, soft // 4))
        self._epoll = select.epoll()
        self._epoll.register(main.fileno(), select.EPOLLIN)
        self._by_fd: dict[int, socket.socket] = {main.fileno(): main}
        self._by_peer: dict[bytes, socket.socket] = {}
        self.muted: set[socket.socket] = set()  # out of `ready()` for now: read by whoever muted them

    def __len__(self) -> int:
        """Peers with a socket of their own."""
        return len(self._by_peer)

    def fileno(self) -> int:
        """Readable when any of the sockets is: what the driver awaits."""
        return self._epoll.fileno()

    def ready(self) -> list[socket.socket]:
        """The sockets with datagrams waiting, without blocking."""
        by_fd = self._by_fd
        return [by_fd[fd] for fd, _ in self._epoll.poll(0) if fd in by_fd]

    def mute(self, sock: socket.socket) -> None:
        """Leave `sock` out of `ready()` (and of the readability the driver awaits) until unmuted."""
        if sock not in self.muted:
            self._epoll.unregister(sock.fileno())
            self.muted.add(sock)

    def unmute(self, sock: socket.socket) -> None:
        if sock in self.muted:
            self.muted.discard(sock)
            self._epoll.register(sock.fileno(), select.EPOLLIN)

    def update(self, moved: dict[bytes, tuple | None]) -> None:
        """Give each moved peer a socket connected to its new address (None: close the peer's socket)."""
        for key, endpoint in moved.items():
            self._close(key)
            if endpoint is not None and len(self._by_peer) < self.limit:
                self._open(key, endpoint)

    def _open(self, key: bytes, endpoint: tuple) -> None:
        sock = socket.socket(self.main.family, socket.SOCK_DGRAM)
        try:
            if sock.family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, PEER_BUFFER)
            except OSError:
                pass
            sock.bind(self._address)
            sock.connect(endpoint)
            sock.setblocking(False)
            self._configure(sock)
        except OSError:  # out of descriptors, an address of another family: the peer shares the main socket
            sock.close()
            return
        self._by_peer[key] = sock
        self._by_fd[sock.fileno()] = sock
        self._epoll.register(sock.fileno(), select.EPOLLIN)

    def _close(self, key: bytes) -> None:
        sock = self._by_peer.pop(key, None)
        if sock is not None:
            del self._by_fd[sock.fileno()]
            if sock in self.muted:
                self.muted.discard(sock)
            else:
                self._epoll.unregister(sock.fileno())
            sock.close()  # datagrams still queued in it are lost, as on a roam in the kernel's WireGuard

    def close(self) -> None:
        for key in list(self._by_peer):
            self._close(key)
        self._epoll.close()
