"""The local app behind the agent in the full-path benchmarks, fast enough never to be the bottleneck
(the same app is measured directly to show it): one thread, an epoll loop, non-blocking sockets,
keep-alive, and precomputed responses.

`GET /bytes/N` streams N bytes; any other request gets a 1 KB body; a request carrying
`Connection: upgrade` is answered 101 and then echoed byte for byte, which is how the benchmarks hold
tunnelled connections open. Request bodies are not read (the benchmarks send none).

Run as `python bench/http_app.py PORT NAME [ADDRESS]` (ADDRESS 127.0.0.1 unless given); prints "ready" once
listening.
"""

from __future__ import annotations

import selectors
import socket
import sys

SMALL_BODY = 1024
SMALL = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 1024\r\n\r\n" + b"k" * SMALL_BODY
SWITCHING = b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: echo\r\n\r\n"
BLOCK = memoryview(bytes(range(256)) * 4096)  # 1 MiB, sent by slices without copying


class Connection:
    """One client: requests are answered in order; a download streams from BLOCK until done."""

    __slots__ = ("sock", "inbox", "outbox", "remaining", "echo", "events")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.inbox = b""
        self.outbox = b""
        self.remaining = 0  # download bytes still to send after outbox
        self.echo = False
        self.events = selectors.EVENT_READ

    def readable(self) -> bool:
        """Take what arrived; False once the client has gone."""
        try:
            data = self.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return True
        except OSError:
            return False
        if not data:
            return False
        if self.echo:
            self.outbox += data
        else:
            self.inbox += data
        return self.flush()

    def flush(self) -> bool:
        """Answer complete requests and send until done or the socket is full; False on a send error."""
        try:
            while True:
                if self.outbox:
                    sent = self.sock.send(self.outbox)
                    self.outbox = self.outbox[sent:]
                    if self.outbox:
                        return True
                elif self.remaining:
                    sent = self.sock.send(BLOCK[:min(self.remaining, len(BLOCK))])
                    self.remaining -= sent
                elif not self._answer():
                    return True
        except (BlockingIOError, InterruptedError):
            return True
        except OSError:
            return False

    def _answer(self) -> bool:
        """Queue the response to the next complete request in the inbox, if there is one."""
        head, sep, rest = self.inbox.partition(b"\r\n\r\n")
        if not sep:
            return False
        self.inbox = rest
        target = head.split(b" ", 2)[1] if head.count(b" ") >= 2 else b"/"
        lowered = head.lower()
        if b"\nconnection: upgrade" in lowered or b"\nconnection: keep-alive, upgrade" in lowered:
            self.outbox, self.inbox, self.echo = SWITCHING + self.inbox, b"", True
        elif target.startswith(b"/bytes/"):
            self.remaining = int(target[7:])
            self.outbox = b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % self.remaining
        else:
            self.outbox = SMALL
        return True

    @property
    def pending(self) -> bool:
        return bool(self.outbox or self.remaining)


def serve(port: int, address: str = "127.0.0.1") -> None:
    selector = selectors.DefaultSelector()
    listener = socket.create_server((address, port), backlog=4096)
    listener.setblocking(False)
    selector.register(listener, selectors.EVENT_READ)
    print("ready", flush=True)
    while True:
        for key, events in selector.select():
            if key.fileobj is listener:
                _accept(listener, selector)
                continue
            conn: Connection = key.data
            alive = conn.readable() if events & selectors.EVENT_READ else True
            if alive and events & selectors.EVENT_WRITE:
                alive = conn.flush()
            if not alive:
                selector.unregister(conn.sock)
                conn.sock.close()
                continue
            wanted = selectors.EVENT_READ | (selectors.EVENT_WRITE if conn.pending else 0)
            if wanted != conn.events:
                conn.events = wanted
                selector.modify(conn.sock, wanted, conn)


def _accept(listener: socket.socket, selector: selectors.BaseSelector) -> None:
    while True:
        try:
            sock, _ = listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = Connection(sock)
        selector.register(sock, conn.events, conn)


if __name__ == "__main__":
    serve(int(sys.argv[1]), *sys.argv[3:4])
