"""Fuzzing the gateway's public fronts: random and mutated-valid bytes to its HTTP/1.1 front, random and
mutated HTTP/2 frames (built with h2, then damaged) to its HTTP/2 front, over in-memory streams on a
virtual clock. Routes lead to an in-memory app (app.test) or nowhere (nowhere.test).

Each example asserts that nothing escapes the connection's handler, that the connection ends (the client
reads to EOF within the virtual time its timeouts allow), and that nothing is left behind: no guard, no
held route, no open HTTP/2 stream, at most the pool's limit of idle agent connections.
"""

from __future__ import annotations

import errno

import h2.config
import h2.connection
import h11
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kakuremichi.gateway.http.http2 import Http2Connection
from kakuremichi.gateway.http.proxy import ProxySettings, open_proxy
from kakuremichi.gateway.http.upstream import PoolLimits
from kakuremichi.gateway.routes import Route, RouteTable

FUZZ = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                        HealthCheck.data_too_large])
TIMEOUT = 5.0  # the client and upstream timeouts, in virtual seconds
LIMITS = PoolLimits(connect_timeout=TIMEOUT, max_idle_per_upstream=4)


async def app(stream: trio.abc.Stream) -> None:
    """The agent's service: 200 "ok" to every request, after reading its body."""
    conn = h11.Connection(h11.SERVER)
    try:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await stream.receive_some(65536))
            elif isinstance(event, h11.EndOfMessage):
                await stream.send_all(conn.send(h11.Response(status_code=200, headers=[(b"content-length", b"2")]))
                                      + conn.send(h11.Data(data=b"ok")) + conn.send(h11.EndOfMessage()))
                conn.start_next_cycle()
            elif isinstance(event, h11.ConnectionClosed):
                return
    except (h11.ProtocolError, trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    finally:
        await stream.aclose()


def serve_fuzzed(data: list[bytes], handler) -> bytes:
    """Run `handler(proxy, server_stream)` against a client sending the pieces of `data`, then EOF; returns
    what the client read. Fails if anything escapes, the connection does not end, or state is left."""
    answer = bytearray()

    async def main() -> None:
        async with trio.open_nursery() as apps:
            async def dial(route: Route) -> trio.abc.Stream:
                if route.domain == "nowhere.test":
                    raise OSError(errno.EHOSTUNREACH, "nowhere")
                ours, theirs = trio.testing.memory_stream_pair()
                apps.start_soon(app, theirs)
                return ours

            routes = RouteTable([Route("app.test", "10.1.0.2", 80), Route("nowhere.test", "10.2.0.2", 80)])
            settings_ = ProxySettings(client_timeout=TIMEOUT, upstream_timeout=TIMEOUT)
            async with open_proxy(routes, dial, settings_, LIMITS) as proxy:
                client, server = trio.testing.memory_stream_pair()
                with trio.fail_after(100 * TIMEOUT):  # virtual: every wait of the gateway's is bounded
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(closing, handler, proxy, server)
                        for piece in data:
                            await client.send_all(piece)
                        await client.send_eof()
                        try:
                            while chunk := await client.receive_some(65536):
                                answer.extend(chunk)
                        except trio.BrokenResourceError:
                            pass
                assert not proxy.watchdog._guards
                assert not proxy.routes._holders
                assert all(len(idle) <= LIMITS.max_idle_per_upstream for idle in proxy.pool._idle.values())
            apps.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    return bytes(answer)


async def closing(handler, proxy, stream) -> None:
    """`handler`, then the stream closed, as the listeners do (pipe.contained, without its containment)."""
    try:
        await handler(proxy, stream)
    finally:
        await trio.aclose_forcefully(stream)


async def serve_http1(proxy, stream) -> None:
    await proxy.serve(stream, scheme="http", peer_ip="192.0.2.1")


async def serve_h2(proxy, stream) -> None:
    conn = Http2Connection(proxy, stream, "192.0.2.1")
    await conn.serve()
    assert not conn.streams  # every stream's exchange ended with the connection


# Mutations: a valid input with bytes flipped, inserted, deleted or the tail cut, at drawn positions.
MUTATION = st.tuples(st.sampled_from(["flip", "insert", "delete", "cut"]), st.integers(0, 1 << 16),
                     st.integers(0, 255))


def mutate(data: bytes, mutations) -> bytes:
    buffer = bytearray(data)
    for kind, position, value in mutations:
        if not buffer:
            break
        i = position % len(buffer)
        if kind == "flip":
            buffer[i] ^= value or 1
        elif kind == "insert":
            buffer.insert(i, value)
        elif kind == "delete":
            del buffer[i]
        else:
            del buffer[i:]
    return bytes(buffer)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)]) if b > a]


def chunked(body: bytes, sizes: list[int]) -> bytes:
    out = bytearray()
    for piece in split(body, sizes):
        out += b"%x\r\n" % len(piece) + piece + b"\r\n"
    return bytes(out + b"0\r\n\r\n")


@st.composite
def http1_request(draw) -> bytes:
    method = draw(st.sampled_from([b"GET", b"POST", b"HEAD", b"PUT", b"CONNECT", b"OPTIONS", b"G\x00T"]))
    target = draw(st.sampled_from([b"/", b"/a?b=c", b"*", b"http://app.test/x", b"https://nowhere.test/",
                                   b"app.test:80", b"/%00", b"//"]))
    version = draw(st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0"]))
    headers = [b"Host: " + draw(st.sampled_from([b"app.test", b"nowhere.test", b"unknown.test", b"APP.test.:80",
                                                 b"a b", b""]))]
    body = draw(st.binary(max_size=300))
    framing = draw(st.sampled_from(["none", "length", "chunked", "both", "two-lengths", "bad-te"]))
    if framing in ("length", "both", "two-lengths"):
        headers.append(b"Content-Length: %d" % len(body))
    if framing == "two-lengths":
        headers.append(b"Content-Length: %d" % (len(body) + 1))
    if framing in ("chunked", "both"):
        headers.append(b"Transfer-Encoding: chunked")
    if framing == "bad-te":
        headers.append(b"Transfer-Encoding: gzip, chunked, identity")
    headers += draw(st.lists(st.sampled_from([b"Connection: close", b"Connection: upgrade", b"Upgrade: websocket",
                                              b"Expect: 100-continue", b"X-Forwarded-For: 1.2.3.4",
                                              b"Te: trailers", b"X: " + b"y" * 70000]), max_size=3))
    encoded = chunked(body, draw(st.lists(st.integers(0, 400), max_size=4))) if "chunked" in framing \
        or framing == "both" else body if framing != "none" else b""
    return method + b" " + target + b" " + version + b"\r\n" + b"\r\n".join(headers) + b"\r\n\r\n" + encoded


@FUZZ
@given(st.binary(max_size=2000), st.lists(st.integers(0, 4000), max_size=3))
def test_random_bytes_to_the_http1_front(data, cuts):
    serve_fuzzed(split(data, cuts), serve_http1)


@FUZZ
@given(st.lists(http1_request(), min_size=1, max_size=3), st.lists(MUTATION, max_size=4),
       st.lists(st.integers(0, 4000), max_size=3))
def test_mutated_requests_to_the_http1_front(requests, mutations, cuts):
    """Pipelined requests with every framing (and the combinations RFC 9112 §6.3 forbids), then damaged."""
    data = mutate(b"".join(requests), mutations)
    answer = serve_fuzzed(split(data, cuts), serve_http1)
    if not mutations and requests[0].startswith(b"GET / HTTP/1.1\r\nHost: app.test\r\n\r\n"):
        assert answer.startswith(b"HTTP/1.1 200 ")


PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


@st.composite
def h2_frames(draw) -> bytes:
    """A client's frames, made by h2: its preface and settings, then requests, bodies, resets, pings."""
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None,
                                                                validate_outbound_headers=False,
                                                                normalize_outbound_headers=False))
    conn.initiate_connection()
    for _ in range(draw(st.integers(1, 4))):
        stream_id = conn.get_next_available_stream_id()
        headers = [(b":method", draw(st.sampled_from([b"GET", b"POST", b"CONNECT", b""]))),
                   (b":scheme", b"https"),
                   (b":authority", draw(st.sampled_from([b"app.test", b"nowhere.test", b"x.test", b"a b"]))),
                   (b":path", draw(st.sampled_from([b"/", b"/x?y", b"", b"*"])))]
        headers += draw(st.lists(st.sampled_from([(b"content-length", b"3"), (b"te", b"trailers"),
                                                  (b"connection", b"close"), (b"cookie", b"a=1")]), max_size=2))
        body = draw(st.binary(max_size=200))
        try:
            conn.send_headers(stream_id, headers, end_stream=not body)
            if body:
                conn.send_data(stream_id, body, end_stream=draw(st.booleans()))
            action = draw(st.sampled_from(["none", "reset", "ping", "window", "priority"]))
            if action == "reset":
                conn.reset_stream(stream_id)
            elif action == "ping":
                conn.ping(b"12345678")
            elif action == "window":
                conn.increment_flow_control_window(draw(st.integers(1, 2**31 - 1)))
            elif action == "priority":
                conn.prioritize(stream_id, weight=draw(st.integers(1, 256)))
        except h2.exceptions.H2Error:
            pass  # the client's own state machine refused: what it built so far is sent
    return conn.data_to_send()


@FUZZ
@given(h2_frames(), st.lists(MUTATION, max_size=4), st.lists(st.integers(0, 4000), max_size=3))
def test_mutated_frames_to_the_http2_front(frames, mutations, cuts):
    serve_fuzzed(split(mutate(frames, mutations), cuts), serve_h2)


@FUZZ
@given(st.binary(max_size=1500), st.booleans())
def test_random_frames_to_the_http2_front(data, with_preface):
    serve_fuzzed([PREFACE + data if with_preface else data], serve_h2)
