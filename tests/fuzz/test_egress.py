"""Fuzzing the exit's parsers: the SOCKS5 sans-IO codec (both sides) and the local HTTP proxy's request
parsing, with random and mutated-valid input. Nothing escapes but the codec's own outcomes (events, and
the errors the callers catch); buffers stay bounded while the codec waits for more."""

from __future__ import annotations

import h11
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kakuremichi.egress import httpproxy, socks5
from kakuremichi.egress.dialer import ExitFailed
from tests.fuzz.test_gateway_http import MUTATION, mutate, split

FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# The longest message either side waits for: a request with a 255-byte name (4 + 1 + 255 + 2 bytes).
LONGEST_MESSAGE = 262

ADDRESSES = [b"\x01\x7f\x00\x00\x01", b"\x04" + bytes(16), b"\x03\x0bexample.com", b"\x03\x00", b"\x05",
             b"\x03\xff" + b"a" * 255, b"\x03\x03a b"]


@st.composite
def socks_client_bytes(draw) -> bytes:
    greeting = bytes((5, len(methods := draw(st.binary(max_size=4))) + 1, 0)) + methods
    request = bytes((5, draw(st.sampled_from([1, 1, 2, 3])), 0)) + draw(st.sampled_from(ADDRESSES)) + \
        draw(st.sampled_from([b"\x00\x50", b"\x00\x00", b"\xff\xff"]))
    return mutate(greeting + request + draw(st.binary(max_size=20)), draw(st.lists(MUTATION, max_size=3)))


def run_server(pieces: list[bytes]) -> None:
    handshake = socks5.ServerHandshake()
    pieces = [*pieces, b""]  # then EOF
    while True:
        event = handshake.next_event()
        assert len(handshake.data_to_send()) <= 2 + LONGEST_MESSAGE
        if event is not socks5.NEED_DATA:
            break
        assert len(handshake._buffer) < LONGEST_MESSAGE  # only an incomplete message is held
        handshake.receive_data(pieces.pop(0))
    assert isinstance(event, (socks5.Request, socks5.Rejected))
    if isinstance(event, socks5.Request):
        assert 0 < event.port < 65536 and event.host
        assert handshake.reply(socks5.SUCCEEDED, ("10.0.0.1", 1080))[:2] == b"\x05\x00"


@FUZZ
@given(st.binary(max_size=600), st.lists(st.integers(0, 600), max_size=4))
def test_random_bytes_to_the_socks5_server(data, cuts):
    run_server(split(data, cuts))


@FUZZ
@given(socks_client_bytes(), st.lists(st.integers(0, 600), max_size=4))
def test_mutated_greetings_and_requests_to_the_socks5_server(data, cuts):
    run_server(split(data, cuts))


@FUZZ
@given(st.one_of(st.binary(max_size=400), st.builds(
    lambda address, code, tail, mutations: mutate(b"\x05\x00" + bytes((5, code, 0)) + address + b"\x00\x50" + tail,
                                                  mutations),
    st.sampled_from(ADDRESSES), st.integers(0, 9), st.binary(max_size=10), st.lists(MUTATION, max_size=3))),
    st.lists(st.integers(0, 400), max_size=4))
def test_replies_to_the_socks5_client(data, cuts):
    handshake = socks5.ClientHandshake("example.com", 443)
    assert handshake.data_to_send()
    pieces = [*split(data, cuts), b""]
    while (event := handshake.next_event()) is socks5.NEED_DATA:
        assert len(handshake._buffer) < LONGEST_MESSAGE
        handshake.receive_data(pieces.pop(0))
    assert isinstance(event, (socks5.Connected, socks5.Failed))


@FUZZ
@given(st.text(max_size=300), st.integers(0, 65535))
def test_encoding_any_destination_is_bytes_or_a_value_error(host, port):
    try:
        encoded = socks5.encode_address(host, port)
    except ValueError:
        return
    assert len(encoded) <= 1 + 1 + 255 + 2


@st.composite
def proxy_request(draw) -> bytes:
    method = draw(st.sampled_from([b"CONNECT", b"GET", b"POST", b"HEAD"]))
    target = draw(st.sampled_from([b"example.com:443", b"[::1]:8080", b"example.com", b":80", b"[::1", b"h:0",
                                   b"http://example.com/a?b", b"http://[::1/", b"http://h:99999/", b"ftp://h/",
                                   b"http://user@h:81/", b"http://\xc3\xa9.test/", b"/relative", b"http:///x"]))
    headers = draw(st.lists(st.sampled_from([b"Host: h", b"Content-Length: 3", b"Transfer-Encoding: chunked",
                                             b"Proxy-Authorization: x", b"Connection: keep-alive, x-a",
                                             b"X-A: 1"]), max_size=3))
    body = draw(st.sampled_from([b"", b"abc", b"3\r\nabc\r\n0\r\n\r\n"]))
    raw = method + b" " + target + b" HTTP/1.1\r\n" + b"".join(h + b"\r\n" for h in headers) + b"\r\n" + body
    return mutate(raw, draw(st.lists(MUTATION, max_size=3)))


def parse_request(data: bytes) -> None:
    """What httpproxy.serve does with a request head: the destination, then the origin's request."""
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(data)
    conn.receive_data(b"")
    try:
        request = conn.next_event()
    except h11.RemoteProtocolError:
        return
    if not isinstance(request, h11.Request):
        return
    try:
        host, port = httpproxy.destination(request)
    except (httpproxy.BadRequest, UnicodeError):
        return
    assert host and 0 < port < 65536
    if request.method != b"CONNECT":
        h11.Connection(h11.CLIENT).send(httpproxy.origin_request(request))  # a request h11 can send


@FUZZ
@given(st.binary(max_size=500))
def test_random_bytes_to_the_http_proxy_parser(data):
    parse_request(data)


@FUZZ
@given(proxy_request())
def test_mutated_requests_to_the_http_proxy_parser(data):
    parse_request(data)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(proxy_request(), st.binary(max_size=300)), st.booleans())
def test_the_http_proxy_serves_any_client_to_the_end(data, exit_works):
    """The whole connection, on a virtual clock, to an origin through the exit (or an exit that fails): the
    connection always ends."""
    async def open_exit(host: str, port: int):
        if not exit_works:
            raise ExitFailed(socks5.HOST_UNREACHABLE, "unreachable")
        ours, theirs = trio.testing.memory_stream_pair()
        nursery.start_soon(origin, theirs)
        return ours, b""

    async def origin(stream) -> None:
        """Answers whatever it first receives, then closes (as asked to by `Connection: close`)."""
        try:
            await stream.receive_some()
            await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await stream.aclose()

    async def main() -> None:
        nonlocal nursery
        async with trio.open_nursery() as nursery:
            client, server = trio.testing.memory_stream_pair()
            with trio.fail_after(10 * httpproxy.HEAD_TIMEOUT):
                async with trio.open_nursery() as inner:
                    inner.start_soon(httpproxy.serve, server, open_exit)
                    await client.send_all(data)
                    await client.send_eof()
                    try:
                        while await client.receive_some():
                            pass
                    except trio.BrokenResourceError:
                        pass
            nursery.cancel_scope.cancel()

    nursery = None
    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
