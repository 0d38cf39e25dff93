"""The reverse proxy end to end over real loopback sockets: client → gateway → real local app."""

from __future__ import annotations

import hashlib
import json
import logging
import socket
from functools import partial

import httpx
import trio
import trio_websocket

from kakuremichi.gateway.http.forwarding import ForwardingPolicy
from kakuremichi.gateway.http.proxy import ProxySettings
from kakuremichi.gateway.http.upstream import PoolLimits
from kakuremichi.gateway.routes import Route, RouteTable
from tests.gateway.app import BLOCK, payload_sha256, start_app
from tests.gateway.conftest import start_gateway


def headers_of(response: httpx.Response) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name, value in response.json()["headers"]:
        out.setdefault(name, []).append(value)
    return out


async def raw_exchange(port: int, request: bytes) -> bytes:
    """Send raw bytes, read until the gateway closes (for requests no well-behaved client makes)."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(request)
        await stream.send_eof()
        answer = b""
        with trio.fail_after(10):
            while chunk := await stream.receive_some():
                answer += chunk
    return answer


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_routes_by_normalised_host(nursery):
    one, two = await start_app(nursery, "one"), await start_app(nursery, "two")
    gw = await start_gateway(nursery, RouteTable([Route("one.test", "127.0.0.1", one),
                                                  Route("Two.Test.", "127.0.0.1", two)]))
    async with httpx.AsyncClient(base_url=gw.url) as client:
        for host, app in [("one.test", "one"), ("ONE.test:8080", "one"), ("two.test.", "two"),
                          ("two.TEST", "two")]:
            response = await client.get("/x?q=1", headers={"host": host})
            assert response.status_code == 200, host
            assert response.json()["app"] == app
            assert response.json()["path"] == "/x" and response.json()["query"] == "q=1"


async def test_unknown_and_disabled_host_get_404_page_or_json(nursery, app_port):
    gw = await start_gateway(nursery, RouteTable([Route("off.test", "127.0.0.1", app_port, enabled=False)]))
    async with httpx.AsyncClient(base_url=gw.url) as client:
        page = await client.get("/", headers={"host": "nowhere.test", "accept": "text/html,*/*"})
        assert page.status_code == 404
        assert page.headers["content-type"].startswith("text/html")
        assert "nowhere.test" in page.text
        api = await client.get("/", headers={"host": "off.test", "accept": "application/json"})
        assert api.status_code == 404
        assert api.json()["code"] == "unknown_host"
        # The connection survives a POST answered early: its body was read away.
        posted = await client.post("/", content=b"x" * 1000, headers={"host": "nowhere.test"})
        assert posted.status_code == 404
        again = await client.get("/", headers={"host": "nowhere.test"})
        assert again.status_code == 404


async def test_agent_unreachable_is_502(nursery):
    gw = await start_gateway(nursery, RouteTable([Route("dead.test", "127.0.0.1", closed_port())]))
    async with httpx.AsyncClient(base_url=gw.url) as client:
        response = await client.get("/", headers={"host": "dead.test", "accept": "application/json"})
    assert response.status_code == 502
    assert response.json()["code"] == "agent_unreachable"


async def test_slow_agent_is_504(nursery, app_port):
    gw = await start_gateway(nursery, RouteTable([Route("app.test", "127.0.0.1", app_port)]),
                             settings=ProxySettings(upstream_timeout=0.3))
    async with httpx.AsyncClient(base_url=gw.url, headers={"host": "app.test"}) as client:
        response = await client.get("/slow?delay=5")
        assert response.status_code == 504
        assert "took too long" in response.text
        assert (await client.get("/slow?delay=0")).status_code == 200


async def test_agent_connect_timeout_is_504(nursery):
    async def blackhole(route):
        await trio.sleep_forever()

    gw = await start_gateway(nursery, RouteTable([Route("app.test", "10.0.0.1", 80)]), dial=blackhole,
                             limits=PoolLimits(connect_timeout=0.2))
    async with httpx.AsyncClient(base_url=gw.url) as client:
        response = await client.get("/", headers={"host": "app.test", "accept": "application/json"})
    assert response.status_code == 504
    assert response.json()["code"] == "upstream_timeout"


async def test_malformed_requests_get_400(gateway):
    assert (await raw_exchange(gateway.port, b"GARBAGE\r\n\r\n")).startswith(b"HTTP/1.1 400 ")
    bad_host = await raw_exchange(gateway.port, b"GET / HTTP/1.1\r\nHost: exa mple/..\r\nConnection: close\r\n\r\n")
    assert bad_host.startswith(b"HTTP/1.1 400 ")
    assert b"Invalid Host" in bad_host
    huge = b"GET / HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n"
    assert (await raw_exchange(gateway.port, huge)).startswith(b"HTTP/1.1 431 ")
    no_host = await raw_exchange(gateway.port, b"GET / HTTP/1.0\r\n\r\n")
    assert no_host.startswith(b"HTTP/1.1 400 ")


async def test_forwarding_headers_replace_untrusted_chain(client):
    response = await client.get("/", headers={"x-forwarded-for": "6.6.6.6", "x-real-ip": "6.6.6.6",
                                              "forwarded": "for=6.6.6.6", "x-forwarded-proto": "https"})
    headers = headers_of(response)
    assert headers["x-forwarded-for"] == ["127.0.0.1"]
    assert headers["x-real-ip"] == ["127.0.0.1"]  # no port, unlike the original gateway
    assert headers["x-forwarded-host"] == ["app.test"]
    assert headers["x-forwarded-proto"] == ["http"]
    assert headers["forwarded"] == ["for=127.0.0.1;host=app.test;proto=http"]
    assert headers["host"] == ["app.test"]


async def test_forwarding_headers_extend_trusted_chain(nursery, app_port):
    settings = ProxySettings(forwarding=ForwardingPolicy.from_strings(["127.0.0.0/8"]))
    gw = await start_gateway(nursery, RouteTable([Route("app.test", "127.0.0.1", app_port)]), settings=settings)
    async with httpx.AsyncClient(base_url=gw.url) as client:
        response = await client.get("/", headers={"host": "app.test", "x-forwarded-for": "203.0.113.9",
                                                  "forwarded": 'for="[2001:db8::1]"',
                                                  "x-forwarded-proto": "https"})
    headers = headers_of(response)
    assert headers["x-forwarded-for"] == ["203.0.113.9, 127.0.0.1"]
    assert headers["x-real-ip"] == ["203.0.113.9"]
    assert headers["x-forwarded-proto"] == ["https"]
    assert headers["forwarded"] == ['for="[2001:db8::1]", for=127.0.0.1;host=app.test;proto=http']


async def test_keep_alive_reuses_one_agent_connection(gateway, client):
    ports = {(await client.get("/")).json()["peer_port"] for _ in range(5)}
    assert len(ports) == 1
    await idle_connections(gateway, ("127.0.0.1", gateway.routes.lookup("app.test").port), 1)


async def idle_connections(gateway, key, count):
    """Wait until the pool holds `count` idle connections to `key` (release follows the response)."""
    with trio.fail_after(5):
        while gateway.proxy.pool.idle_count(key) != count:
            await trio.sleep(0.01)
    return gateway.proxy.pool._idle.get(key, [])


async def test_pooled_connection_closed_by_agent_while_idle_is_dropped(nursery):
    port = await start_app(nursery, "app")
    gw = await start_gateway(nursery, RouteTable([Route("app.test", "127.0.0.1", port)]))
    async with httpx.AsyncClient(base_url=gw.url, headers={"host": "app.test"}) as client:
        first = (await client.get("/")).json()["peer_port"]
        (conn,) = await idle_connections(gw, ("127.0.0.1", port), 1)
        await conn.stream.aclose()  # as if the agent's server had timed it out
        await idle_connections(gw, ("127.0.0.1", port), 0)
        second = await client.get("/")
        assert second.status_code == 200
        assert second.json()["peer_port"] != first


async def test_an_idle_connection_gets_its_watcher_only_after_a_moment(nursery):
    """Under load a pooled connection is reused within milliseconds: no watcher task per request, and its
    keep-alive probing stays at the exchange's setting (no change, and no netstack wake-up, per request)."""
    from kakuremichi.gateway.http.upstream import WATCH_AFTER

    port = await start_app(nursery, "app")
    gw = await start_gateway(nursery, RouteTable([Route("app.test", "127.0.0.1", port)]))
    async with httpx.AsyncClient(base_url=gw.url, headers={"host": "app.test"}) as client:
        await client.get("/")
        (conn,) = await idle_connections(gw, ("127.0.0.1", port), 1)
        assert conn._watch is None and not conn.quiet
        await trio.sleep(WATCH_AFTER + 0.2)
        assert conn._watch is not None and conn.quiet  # idle a while now: watched for the agent closing it
        assert (await client.get("/")).status_code == 200
        (again,) = await idle_connections(gw, ("127.0.0.1", port), 1)
        assert again is conn and conn._watch is None and not conn.quiet  # picked up: back unwatched


async def test_a_request_cancelled_while_picking_up_a_watched_connection_does_not_lose_it(nursery):
    """An HTTP/2 client resetting its stream, or a withdrawn route, may cancel the request just as it takes
    a watched connection from the pool: the connection still ends up with the request (which closes it)."""
    from kakuremichi.gateway.http.upstream import WATCH_AFTER

    port = await start_app(nursery, "app")
    route = Route("app.test", "127.0.0.1", port)
    gw = await start_gateway(nursery, RouteTable([route]))
    async with httpx.AsyncClient(base_url=gw.url, headers={"host": "app.test"}) as client:
        await client.get("/")
    (conn,) = await idle_connections(gw, route.upstream, 1)
    await trio.sleep(WATCH_AFTER + 0.2)
    assert conn._watch is not None
    acquired = None
    with trio.CancelScope() as scope:
        scope.cancel()
        acquired = await gw.proxy.pool.acquire(route)
    assert acquired is conn  # neither pooled nor closed any more: only its holder can close it
    await gw.proxy.pool.release(acquired)


async def agent_that_drops_its_second_request(nursery, methods: list[bytes]):
    """A gateway to an agent that answers one request per connection and drops the next one unanswered,
    like a server timing out a kept-alive connection just as a request goes out; `methods` records what
    reached it."""

    async def answer_once(stream):
        request = b""
        while b"\r\n\r\n" not in request:
            request += await stream.receive_some()
        methods.append(request.split(b" ", 1)[0])
        await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        methods.append((await stream.receive_some()).split(b" ", 1)[0])
        await stream.aclose()

    listeners = await nursery.start(partial(trio.serve_tcp, answer_once, 0, host="127.0.0.1"))
    port = listeners[0].socket.getsockname()[1]
    return await start_gateway(nursery, RouteTable([Route("app.test", "127.0.0.1", port)])), port


async def test_request_on_connection_the_agent_just_closed_is_replayed(nursery):
    methods = []
    gw, port = await agent_that_drops_its_second_request(nursery, methods)
    async with httpx.AsyncClient(base_url=gw.url, headers={"host": "app.test"}) as client:
        assert (await client.get("/")).text == "ok"
        await idle_connections(gw, ("127.0.0.1", port), 1)
        response = await client.get("/")
        assert response.status_code == 200 and response.text == "ok"
    assert methods[:3] == [b"GET", b"GET", b"GET"]  # dropped on the pooled connection, answered on a new one


async def test_a_post_on_a_connection_the_agent_just_closed_is_not_repeated(nursery):
    """A POST may have taken effect before the connection died: RFC 9110 §9.2.2 forbids repeating it."""
    methods = []
    gw, port = await agent_that_drops_its_second_request(nursery, methods)
    async with httpx.AsyncClient(base_url=gw.url, headers={"host": "app.test"}) as client:
        assert (await client.get("/")).text == "ok"
        await idle_connections(gw, ("127.0.0.1", port), 1)
        response = await client.post("/charge")
        assert response.status_code == 502
    assert methods == [b"GET", b"POST"]  # the POST went out once, and only once


async def test_close_delimited_response_from_an_http10_agent(nursery):
    body = BLOCK * 20

    async def http10_server(stream):
        request = b""
        while b"\r\n\r\n" not in request:
            request += await stream.receive_some()
        await stream.send_all(b"HTTP/1.0 200 OK\r\nContent-Type: application/octet-stream\r\n\r\n")
        for i in range(0, len(body), 4096):
            await stream.send_all(body[i:i + 4096])
        await stream.aclose()  # the end of the body is the end of the connection

    listeners = await nursery.start(partial(trio.serve_tcp, http10_server, 0, host="127.0.0.1"))
    port = listeners[0].socket.getsockname()[1]
    gw = await start_gateway(nursery, RouteTable([Route("old.test", "127.0.0.1", port)]))
    async with httpx.AsyncClient(base_url=gw.url, headers={"host": "old.test"}) as client:
        for _ in range(2):  # the client connection stays usable; the agent's could not be
            response = await client.get("/")
            assert response.headers["transfer-encoding"] == "chunked"
            assert hashlib.sha256(response.content).digest() == hashlib.sha256(body).digest()


async def test_client_leaving_mid_download_closes_the_agent_connection(nursery):
    closed = trio.Event()

    async def endless(stream):
        request = b""
        while b"\r\n\r\n" not in request:
            request += await stream.receive_some()
        await stream.send_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        try:
            while True:
                await stream.send_all(b"1000\r\n" + b"x" * 4096 + b"\r\n")
        except trio.BrokenResourceError:
            closed.set()

    listeners = await nursery.start(partial(trio.serve_tcp, endless, 0, host="127.0.0.1"))
    gw = await start_gateway(nursery, RouteTable([Route("app.test", "127.0.0.1",
                                                        listeners[0].socket.getsockname()[1])]))
    stream = await trio.open_tcp_stream("127.0.0.1", gw.port)
    await stream.send_all(b"GET / HTTP/1.1\r\nHost: app.test\r\n\r\n")
    assert (await stream.receive_some()).startswith(b"HTTP/1.1 200 ")
    await stream.aclose()
    with trio.fail_after(5):
        await closed.wait()


async def test_large_bodies_stream_both_ways_with_bounded_memory(client):
    size = 50 * 1024 * 1024

    async def body():
        for _ in range(size // len(BLOCK)):
            yield BLOCK

    peak = [0]

    async def watch_rss():
        while True:
            peak[0] = max(peak[0], rss())
            await trio.sleep(0.05)

    base = rss()
    async with trio.open_nursery() as watcher:
        watcher.start_soon(watch_rss)
        upload = await client.post("/upload", content=body())  # chunked request body
        assert upload.json() == {"length": size, "sha256": hashlib.sha256(BLOCK * (size // len(BLOCK))).hexdigest()}
        for chunked in ("", "1"):
            digest, length = hashlib.sha256(), 0
            async with client.stream("GET", f"/download?size={size}&chunked={chunked}") as response:
                assert response.status_code == 200
                assert ("content-length" in response.headers) == (not chunked)
                async for chunk in response.aiter_raw():
                    digest.update(chunk)
                    length += len(chunk)
            assert length == size
            assert digest.hexdigest() == payload_sha256(size)
        watcher.cancel_scope.cancel()
    assert peak[0] - base < 30 * 1024 * 1024, "a 50 MB body must not be buffered"


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


async def test_hundred_concurrent_requests(gateway):
    async with httpx.AsyncClient(base_url=gateway.url, headers={"host": "app.test"},
                                 limits=httpx.Limits(max_connections=100)) as client:
        results = {}

        async def one(i):
            response = await client.get(f"/item/{i}")
            results[i] = response.json()["path"]

        async with trio.open_nursery() as nursery:
            for i in range(100):
                nursery.start_soon(one, i)
    assert results == {i: f"/item/{i}" for i in range(100)}


async def test_websocket_echo_through_proxy(gateway):
    async with trio.open_nursery() as nursery:
        stream = await trio.open_tcp_stream("127.0.0.1", gateway.port)
        ws = await trio_websocket.wrap_client_stream(nursery, stream, "app.test", "/ws")
        for message in ["hello", "x" * 100_000, "done"]:
            await ws.send_message(message)
            assert await ws.get_message() == message
        await ws.send_message(b"\x00\x01binary")
        assert await ws.get_message() == b"\x00\x01binary"
        await ws.aclose()


async def test_route_swap_keeps_unaffected_exchanges_and_cuts_withdrawn_ones(nursery):
    one, two = await start_app(nursery, "one"), await start_app(nursery, "two")
    keep = Route("keep.test", "127.0.0.1", one)
    moved = Route("moved.test", "127.0.0.1", one)
    gw = await start_gateway(nursery, RouteTable([keep, moved]))
    size = 20 * 1024 * 1024
    done = {}

    async def slow_download(client):
        digest, length = hashlib.sha256(), 0
        async with client.stream("GET", f"/download?size={size}") as response:
            async for chunk in response.aiter_raw():
                digest.update(chunk)
                length += len(chunk)
                await trio.sleep(0.001)  # a slow reader keeps the exchange in flight across the swap
        done["download"] = (length, digest.hexdigest())

    async with httpx.AsyncClient(base_url=gw.url, headers={"host": "keep.test"}) as client, \
            trio.open_nursery() as inner:
        stream = await trio.open_tcp_stream("127.0.0.1", gw.port)
        ws = await trio_websocket.wrap_client_stream(inner, stream, "moved.test", "/ws")
        await ws.send_message("before")
        assert await ws.get_message() == "before"
        inner.start_soon(slow_download, client)
        await trio.sleep(0.2)
        gw.routes.replace([keep, Route("moved.test", "127.0.0.1", two)])
        with trio.fail_after(5):
            try:
                await ws.send_message("after")
                await ws.get_message()
                raise AssertionError("the WebSocket of a re-targeted route must be cut")
            except trio_websocket.ConnectionClosed:
                pass
        moved_now = await client.get("/", headers={"host": "moved.test"})
        assert moved_now.json()["app"] == "two"
    assert done["download"] == (size, payload_sha256(size))


async def test_expect_100_continue_and_early_answer(client, gateway):
    answer = await raw_exchange(gateway.port, b"POST /upload HTTP/1.1\r\nHost: app.test\r\nContent-Length: 5\r\n"
                                              b"Expect: 100-continue\r\nConnection: close\r\n\r\nhello")
    assert b'"length": 5' in answer
    assert json.loads(answer.split(b"\r\n\r\n")[-1])["length"] == 5


async def test_idle_client_connections_are_closed(nursery, app_port):
    gw = await start_gateway(nursery, RouteTable([Route("app.test", "127.0.0.1", app_port)]),
                             settings=ProxySettings(client_timeout=0.2))
    stream = await trio.open_tcp_stream("127.0.0.1", gw.port)
    await stream.send_all(b"GET / HTTP/1.1\r\nHost: app.test\r\n\r\n")
    answer = b""
    with trio.fail_after(5):
        while chunk := await stream.receive_some():
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200 ")  # answered, then closed once idle: EOF ended the loop
    slow = await trio.open_tcp_stream("127.0.0.1", gw.port)
    await slow.send_all(b"GET / HTTP/1.1\r\nHost: app")  # a head that never completes
    with trio.fail_after(5):
        assert await slow.receive_some() == b""


async def test_stalled_upload_and_unread_response_are_cut_off(nursery, app_port):
    gw = await start_gateway(nursery, RouteTable([Route("app.test", "127.0.0.1", app_port)]),
                             settings=ProxySettings(client_timeout=0.3))
    stalled = await trio.open_tcp_stream("127.0.0.1", gw.port)
    await stalled.send_all(b"POST /upload HTTP/1.1\r\nHost: app.test\r\nContent-Length: 100\r\n\r\n0123456789")
    with trio.fail_after(5):  # the rest of the body never comes: the exchange is abandoned, the connection closed
        while await stalled.receive_some():
            pass
    # A client that asks for a large body and never reads it: the gateway's writes stall, then give up.
    reader = socket.create_connection(("127.0.0.1", gw.port))
    reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    reader.sendall(b"GET /download?size=67108864 HTTP/1.1\r\nHost: app.test\r\n\r\n")
    with trio.fail_after(10):
        await trio.sleep(2)
        reader.setblocking(False)
        received = 0
        while True:
            await trio.lowlevel.wait_readable(reader)
            try:
                chunk = reader.recv(1 << 20)
            except ConnectionResetError:
                break
            if not chunk:
                break
            received += len(chunk)
    reader.close()
    assert received < 67108864  # closed mid-body, not served in full to a reader that stopped


def _access_lines(caplog) -> list[dict]:
    return [r.fields for r in caplog.records if r.name == "kakuremichi.gateway.access"]


async def test_access_log_has_one_line_per_request_without_secrets(nursery, app_port, caplog):
    caplog.set_level(logging.INFO, logger="kakuremichi.gateway.access")
    gw = await start_gateway(nursery, RouteTable([Route("app.test", "127.0.0.1", app_port)]),
                             settings=ProxySettings(upstream_timeout=0.3))
    async with httpx.AsyncClient(base_url=gw.url, headers={"host": "app.test"}) as client:
        await client.get("/hello?token=s3cret", headers={"authorization": "Bearer t0psecret"})
        await trio.sleep(1)  # a keep-alive pause before the next request is not the request's time
        await client.get("/hello")
        await client.get("/slow?delay=5")
    first, second, slow = _access_lines(caplog)
    assert first["path"] == "/hello" and first["status"] == 200 and first["method"] == "GET"
    assert first["host"] == "app.test" and first["upstream"] == f"127.0.0.1:{app_port}"
    assert "s3cret" not in str(caplog.records) and "t0psecret" not in caplog.text + str(first)
    assert second["reused"] and second["ms"] < 1000  # less than the pause: it did not count the pause
    assert slow["status"] == 504 and slow["error"] == "upstream_timeout"


async def test_slow_agent_after_an_uploaded_body_is_504(nursery, app_port):
    # The body's writes to the agent run while the response is awaited: they must not clear its timeout.
    gw = await start_gateway(nursery, RouteTable([Route("app.test", "127.0.0.1", app_port)]),
                             settings=ProxySettings(upstream_timeout=0.3))
    async with httpx.AsyncClient(base_url=gw.url, headers={"host": "app.test", "accept": "application/json"},
                                 timeout=30) as client:
        response = await client.post("/slow?delay=5", content=b"x" * 1000)
    assert response.status_code == 504 and response.json()["code"] == "upstream_timeout"


async def test_an_agent_answering_without_reading_the_upload_is_relayed_in_full(nursery):
    """An agent may stream a long answer and never read the request body: its stalled body writes are not
    a timeout as long as the answer keeps coming (each of its pieces is waited for under the timeout)."""

    async def answer_unread(stream):
        request = b""
        while b"\r\n\r\n" not in request:
            request += await stream.receive_some()
        await stream.send_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(8):
            await trio.sleep(0.15)
            await stream.send_all(b"5\r\nchunk\r\n")
        await stream.send_all(b"0\r\n\r\n")
        await trio.sleep_forever()  # still not reading

    listeners = await nursery.start(partial(trio.serve_tcp, answer_unread, 0, host="127.0.0.1"))
    port = listeners[0].socket.getsockname()[1]
    gw = await start_gateway(nursery, RouteTable([Route("app.test", "127.0.0.1", port)]),
                             settings=ProxySettings(upstream_timeout=0.5))
    size = 1 << 30
    client = await trio.open_tcp_stream("127.0.0.1", gw.port)
    response = b""
    async with trio.open_nursery() as uploading:
        async def upload():
            await client.send_all(b"POST / HTTP/1.1\r\nHost: app.test\r\nContent-Length: %d\r\n\r\n" % size)
            block = b"x" * (1 << 20)
            for _ in range(size >> 20):
                await client.send_all(block)  # stalls once every buffer on the way is full

        uploading.start_soon(upload)
        with trio.fail_after(10):
            while not response.endswith(b"0\r\n\r\n"):
                data = await client.receive_some()
                assert data, f"closed after {response!r}"
                response += data
        uploading.cancel_scope.cancel()
    assert response.count(b"5\r\nchunk\r\n") == 8


async def test_an_upload_longer_than_the_upstream_timeout_gets_its_answer(nursery, app_port):
    """The wait for the agent's answer starts over whenever it takes more of the body: an agent reading a
    long upload is not slow to answer."""
    gw = await start_gateway(nursery, RouteTable([Route("app.test", "127.0.0.1", app_port)]),
                             settings=ProxySettings(upstream_timeout=0.3))

    async def trickle():
        for _ in range(6):
            yield b"x" * 1000
            await trio.sleep(0.15)  # 0.9 s in all, each piece well within the timeout

    async with httpx.AsyncClient(base_url=gw.url, headers={"host": "app.test"}, timeout=30) as client:
        response = await client.post("/upload", content=trickle())
    assert response.status_code == 200 and response.json()["length"] == 6000


async def test_malformed_chunked_bodies_get_400(gateway):
    """A chunk size past 64 bits (h11 takes 20 hex digits) or an unparsable one is a 400, not a body cut
    short or a connection closed without a word."""
    head = b"POST /upload HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    for chunks in (b"fffffffffffffffff\r\nabc\r\n0\r\n\r\n", b"3\r\nabc\r\n8000000000000000\r\nabc\r\n0\r\n\r\n",
                   b"zz\r\nabc\r\n0\r\n\r\n"):
        answer = await raw_exchange(gateway.port, head + chunks)
        assert answer.startswith(b"HTTP/1.1 400 "), chunks
        assert b"Malformed request body" in answer
    largest = await raw_exchange(gateway.port, head + b"7fffffffffffffff\r\nabc")
    assert b"too large" not in largest  # the largest 64-bit size is a body (only cut short by the EOF)


async def test_a_bug_in_one_connection_is_contained_counted_and_logged_once(gateway, caplog):
    real_serve = gateway.proxy.serve

    async def buggy_serve(stream, *, scheme, peer_ip):
        raise RuntimeError("a bug in the proxy")

    gateway.proxy.serve = buggy_serve
    for _ in range(3):
        try:
            answer = await raw_exchange(gateway.port, b"GET / HTTP/1.1\r\nHost: app.test\r\n\r\n")
        except trio.BrokenResourceError:  # reset: the gateway closed with the request unread
            answer = b""
        assert answer == b""  # closed without an answer
    assert gateway.proxy.faults.counts == {"RuntimeError": 3}
    assert caplog.text.count("gateway connection: unexpected error contained") == 1
    gateway.proxy.serve = real_serve
    answer = await raw_exchange(gateway.port, b"GET / HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200 ")  # the listener goes on
