"""The receiver's buffer of in-order data: the arrived payloads kept as they came, joined only when read.

A bytearray appended at the end and trimmed at the front by each read makes CPython copy what is left each
time it next grows (a front-trimmed bytearray is moved to a new allocation, not extended), so a full
window was copied over and over. Here a payload is kept by reference (a view into its decrypted packet,
or a run the stack joined) and each read copies its bytes out once. Only a large payload that is most
of its packet is kept that way: small ones are copied onto a tail chunk, so a peer sending one-byte
segments cannot make a window's worth of data hold a packet and a view per byte.
"""

from __future__ import annotations

from collections import deque

BY_REFERENCE = 1024  # payloads at least this long (and most of their packet) are kept without a copy
_SLACK = 256  # bytes of a packet around its payload that may be kept alive with it


class ReceiveBuffer:
    """In-order bytes waiting for the user: `buffer += data` appends, `take(n)` removes from the front."""

    __slots__ = ("_chunks", "_size")

    def __init__(self) -> None:
        self._chunks: deque = deque()
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def __iadd__(self, data: bytes | bytearray | memoryview) -> ReceiveBuffer:
        size = len(data)
        if not size:
            return self
        chunks = self._chunks
        if size >= BY_REFERENCE and (type(data) is bytes or type(data) is memoryview
                                     and type(data.obj) is bytes and len(data.obj) <= size + _SLACK):
            chunks.append(data)  # immutable: safe to keep; a mutable buffer may change once we return
        elif chunks and type(chunks[-1]) is bytearray:
            chunks[-1] += data
        else:
            chunks.append(bytearray(data))
        self._size += size
        return self

    def take(self, max_bytes: int) -> bytes:
        """Up to `max_bytes` from the front, as one bytes object."""
        chunks = self._chunks
        taken: list = []
        count = 0
        while chunks and count < max_bytes:
            chunk = chunks[0]
            room = max_bytes - count
            if len(chunk) <= room:
                chunks.popleft()
                taken.append(chunk)
                count += len(chunk)
            else:
                view = memoryview(chunk)
                taken.append(view[:room])
                chunks[0] = view[room:]
                count = max_bytes
        self._size -= count
        if len(taken) == 1 and type(taken[0]) is bytes:
            return taken[0]
        return b"".join(taken)
