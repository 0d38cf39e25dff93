"""The HTTP/1.1 front's refusals over real sockets: requests and agent responses that could be read two ways
(RFC 9112 §11.2 request smuggling, response splitting) are answered with an error, never forwarded."""

from __future__ import annotations

from functools import partial

import pytest
import trio

from kakuremichi.gateway.routes import Route, RouteTable
from tests.gateway.conftest import start_gateway
from tests.gateway.test_proxy import raw_exchange

SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: app.test\r\n\r\n"
POST = b"POST /upload HTTP/1.1\r\nHost: app.test\r\n"


async def _request_head(stream) -> bytes:
    """What a fake agent reads before it answers."""
    request = b""
    while b"\r\n\r\n" not in request:
        request += await stream.receive_some()
    return request


@pytest.mark.parametrize("request_bytes, status", [
    (POST + b"Content-Length: 48\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + SMUGGLED, 400),
    (POST + b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n" + SMUGGLED, 400),
    (POST + b"Content-Length: 5\r\nContent-Length: 48\r\n\r\nhello" + SMUGGLED, 400),
    (POST + b"Content-Length: 5, 48\r\n\r\nhello" + SMUGGLED, 400),
    (b"GET / HTTP/1.1\r\nHost: app.test\r\nX-Folded: a\r\n Content-Length: 48\r\n\r\n" + SMUGGLED, 400),  # obs-fold
    (b"GET / HTTP/1.1\nHost: app.test\nContent-Length: 48\n\n" + SMUGGLED, 400),  # bare LF
    (b"GET / HTTP/1.1\r\nHost: app.test\rContent-Length: 48\r\n\r\n" + SMUGGLED, 400),  # bare CR
    (b"GET / HTTP/1.1\r\nHost: app.test\r\nContent-Length : 48\r\n\r\n" + SMUGGLED, 400),
    (b"GET / HTTP/1.1\r\nHost: app.test\r\nX: a\x00b\r\n\r\n", 400),
    (POST + b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n" + SMUGGLED, 501),
    (POST + b"Transfer-Encoding: chunked\r\n\r\n10000000000000000\r\n" + SMUGGLED, 400),  # 65-bit chunk size
    (b"GET / HTTP/2.0\r\nHost: app.test\r\n\r\n", 505),
    (b"GET / HTTP/1.1\r\nHost: app.test\r\n" + b"X: y\r\n" * 300 + b"\r\n", 431),  # more than MAX_HEADERS
])
async def test_requests_readable_two_ways_are_refused(gateway, request_bytes, status):
    answer = await raw_exchange(gateway.port, request_bytes)
    assert answer.startswith(b"HTTP/1.1 %d " % status), answer[:200]
    assert answer.count(b"HTTP/1.1 ") == 1  # nothing smuggled behind it was answered


@pytest.mark.parametrize("response", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nX: a\r\n Content-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok",
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\n",  # nobody asked
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",  # relayed gzipped
])
async def test_agent_responses_readable_two_ways_are_502(nursery, response):
    async def agent(stream):
        await _request_head(stream)
        await stream.send_all(response)
        await stream.aclose()

    listeners = await nursery.start(partial(trio.serve_tcp, agent, 0, host="127.0.0.1"))
    gw = await start_gateway(nursery, RouteTable([Route("app.test", "127.0.0.1",
                                                        listeners[0].socket.getsockname()[1])]))
    answer = await raw_exchange(gw.port, b"GET / HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 502 "), answer[:200]


async def test_an_agent_chunk_size_past_63_bits_ends_the_response(nursery):
    """Read as a wrapped size, "rest" would be body; refused, the client connection closes without the body's
    end (its head and first chunk were queued with the refusal, so nothing of the response may arrive at all)."""
    async def agent(stream):
        await _request_head(stream)
        await stream.send_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n"
                              b"8000000000000000\r\nrest\r\n0\r\n\r\n")
        await trio.sleep_forever()

    listeners = await nursery.start(partial(trio.serve_tcp, agent, 0, host="127.0.0.1"))
    gw = await start_gateway(nursery, RouteTable([Route("app.test", "127.0.0.1",
                                                        listeners[0].socket.getsockname()[1])]))
    answer = await raw_exchange(gw.port, b"GET / HTTP/1.1\r\nHost: app.test\r\n\r\n")
    assert b"rest" not in answer and not answer.endswith(b"0\r\n\r\n")


async def test_a_head_response_has_no_body_and_connection_close_ends_the_connection(gateway):
    """The agent's answer to HEAD announces a length it does not send: read as a body, the next response
    would be eaten by it. The GET after it asks to close: answered, the gateway closes (else the client
    would wait for the end of the connection that never comes)."""
    stream = await trio.open_tcp_stream("127.0.0.1", gateway.port)
    async with stream:
        await stream.send_all(b"HEAD /headers HTTP/1.1\r\nHost: app.test\r\n\r\n"
                              b"GET /headers HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n")
        answer = b""
        with trio.fail_after(10):
            while chunk := await stream.receive_some():
                answer += chunk
    head, rest = answer.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 200 ") and b"content-length: " in head.lower()
    assert rest.startswith(b"HTTP/1.1 200 ") and rest.endswith(b"}")  # the GET's JSON right after the head


async def test_an_agent_connection_the_agent_asked_to_close_is_not_pooled(nursery):
    """A body-less answer saying Connection: close, on a connection the agent leaves open a moment."""
    async def agent(stream):
        await _request_head(stream)
        await stream.send_all(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
        await trio.sleep(5)

    listeners = await nursery.start(partial(trio.serve_tcp, agent, 0, host="127.0.0.1"))
    route = Route("app.test", "127.0.0.1", listeners[0].socket.getsockname()[1])
    gw = await start_gateway(nursery, RouteTable([route]))
    answer = await raw_exchange(gw.port, b"GET / HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 204 ")
    assert gw.proxy.pool.idle_count(route.upstream) == 0


async def test_an_agent_connection_with_bytes_past_its_answer_is_not_pooled(nursery):
    """An answer followed, in the same write, by a response nobody asked for: the client gets the first, and
    the connection is closed rather than pooled, so the next request's answer is never read from a
    hostile agent's stock."""
    async def agent(stream):
        await _request_head(stream)
        await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
                              b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nstock!")
        await trio.sleep(5)

    listeners = await nursery.start(partial(trio.serve_tcp, agent, 0, host="127.0.0.1"))
    route = Route("app.test", "127.0.0.1", listeners[0].socket.getsockname()[1])
    gw = await start_gateway(nursery, RouteTable([route]))
    answer = await raw_exchange(gw.port, b"GET / HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b"\r\n\r\nok")
    assert gw.proxy.pool.idle_count(route.upstream) == 0
