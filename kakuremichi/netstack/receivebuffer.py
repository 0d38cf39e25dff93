"""The receiver's buffer of in-order data: the arrived payloads kept as they came, joined only when read.

A bytearray appended at the end and trimmed at the front by each read makes CPython copy what is left each
time it next grows (a front-trimmed bytearray is moved to a new allocation, not extended), so a full
window was copied over and over. Here a payload is kept by reference (a view into its decrypted packet,
or a run the stack joined) and each read copies its bytes out once.
"""

from __future__ import annotations

from collections import deque


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
        if size:
            if type(data) is not bytes and not (type(data) is memoryview and type(data.obj) is bytes):
                data = bytes(data)  # a mutable buffer may change under us once this call returns
            self._chunks.append(data)
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
