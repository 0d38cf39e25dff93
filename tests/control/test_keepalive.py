"""A kept-alive HTTP connection whose request was answered before its body arrived (a wrong token's 403, a
405) answers its next request, or is closed: Hypercorn left such a connection open and silent."""

from __future__ import annotations

import pytest
import trio

BODY = b'{"name": "x"}' * 10


async def exchange(port: int, head: bytes, body: bytes, pause: float) -> tuple[bytes, bytes]:
    """Send `head`, then after `pause` the `body` (in two parts), read the answer, then ask GET /healthz on the
    same socket: both answers (the second b"" when control closed the connection cleanly)."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(head + body[:5])
        await trio.sleep(pause)
        await stream.send_all(body[5:])
        first = await read_answer(stream)
        await stream.send_all(b"GET /healthz HTTP/1.1\r\nHost: control\r\n\r\n")
        return first, await read_answer(stream)


async def read_answer(stream: trio.SocketStream) -> bytes:
    data = b""
    with trio.fail_after(5):  # a hang is the bug
        while b"\r\n\r\n" not in data or len(data.partition(b"\r\n\r\n")[2]) < content_length(data):
            chunk = await stream.receive_some()
            if not chunk:
                break
            data += chunk
    return data


def content_length(data: bytes) -> int:
    for line in data.partition(b"\r\n\r\n")[0].lower().split(b"\r\n"):
        if line.startswith(b"content-length:"):
            return int(line.split(b":")[1])
    return 0


def post(path: str, length: int, token: str = "wrong") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: control\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n").encode()


@pytest.mark.parametrize("path, status", [("/api/agents", b"403"), ("/healthz", b"405")])
async def test_a_request_answered_before_its_body_arrived_leaves_the_connection_usable(control, path, status):
    port = int(control.url.rsplit(":", 1)[1])
    for i in range(20):  # the body arriving around the answer, at 20 moments
        first, second = await exchange(port, post(path, len(BODY)), BODY, i * 0.0005)
        assert first.split(b" ")[1] == status
        assert second.startswith(b"HTTP/1.1 200") and b"configVersion" in second, (i, first, second)


async def test_a_body_too_big_to_read_is_answered_with_connection_close(control):
    """Over Quart's limit the body is not read: the answer tells the client not to send another request on it."""
    port = int(control.url.rsplit(":", 1)[1])
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(post("/api/agents", 4 << 20) + b"x" * 1000)
        head = (await read_answer(stream)).partition(b"\r\n\r\n")[0].lower()
    assert head.startswith(b"http/1.1 403") and b"\r\nconnection: close" in head
