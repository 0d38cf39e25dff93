"""HTTP/2 at the HTTPS listener (ALPN h2) over real sockets: client → gateway → real local app."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import socket
import ssl
import struct
from collections import deque

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.settings
import httpx
import pytest
import trio
import trio.testing

from kakuremichi.gateway.certs.challenges import ChallengeStore
from kakuremichi.gateway.certs.manager import CertificateManager
from kakuremichi.gateway.certs.store import CertStore
from kakuremichi.gateway.http.connection import CHUNK
from kakuremichi.gateway.http.http2 import _READ_AHEAD, MAX_CONCURRENT_STREAMS, Http2Stream, serve_http2
from kakuremichi.gateway.http.proxy import ProxySettings, open_proxy
from kakuremichi.gateway.routes import Route, RouteTable, TlsMode
from kakuremichi.pipe import splice
from tests.gateway.app import payload_sha256
from tests.gateway.conftest import start_gateway, tcp_dial

HOST = "dev.test"


class CountingRelay:
    """A TCP relay in front of the gateway's HTTPS port: tells how many connections the client opened."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.accepted = 0
        self.port = 0

    async def run(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async def handle(client: trio.SocketStream) -> None:
            self.accepted += 1
            await splice(client, await trio.open_tcp_stream("127.0.0.1", self.target_port))

        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(handle, listeners)


async def start_h2_gateway(nursery, tmp_path, app_port, **kwargs):
    routes = RouteTable([Route(HOST, "127.0.0.1", app_port, tls=TlsMode.SELF_SIGNED)])
    manager = CertificateManager(CertStore(tmp_path / "state"), ChallengeStore())
    manager.update_routes(routes)
    return await start_gateway(nursery, routes, tls_context=manager.context, **kwargs)


async def relayed(nursery, gateway) -> CountingRelay:
    relay = CountingRelay(gateway.https_port)
    await nursery.start(relay.run)
    return relay


def h2_client(port: int, **kwargs) -> httpx.AsyncClient:
    return httpx.AsyncClient(http2=True, verify=False, base_url=f"https://127.0.0.1:{port}",
                             headers={"host": HOST}, timeout=30, **kwargs)


def _access_lines(caplog) -> list[dict]:
    return [r.fields for r in caplog.records if r.name == "kakuremichi.gateway.access"]


class RawH2Client:
    """A bare HTTP/2 client (the h2 library over a TLS stream), for what httpx won't do on demand:
    resetting one stream while others go on."""

    def __init__(self, stream: trio.SSLStream) -> None:
        self.stream = stream
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
        self.events: deque[h2.events.Event] = deque()
        self.resets: list[int] = []  # streams the gateway reset

    @classmethod
    async def connect(cls, port: int, *, validate: bool = True) -> RawH2Client:
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        context.set_alpn_protocols(["h2"])
        stream = trio.SSLStream(await trio.open_tcp_stream("127.0.0.1", port), context, server_hostname=HOST,
                                https_compatible=True)
        await stream.do_handshake()
        assert stream.selected_alpn_protocol() == "h2"
        client = cls(stream)
        client.h2.config.validate_outbound_headers = client.h2.config.normalize_outbound_headers = validate
        client.h2.initiate_connection()
        await client.flush()
        return client

    async def flush(self) -> None:
        if data := self.h2.data_to_send():
            await self.stream.send_all(data)

    async def get(self, path: str, headers=()) -> int:
        stream_id = self.h2.get_next_available_stream_id()
        self.h2.send_headers(stream_id, [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", HOST.encode()),
                                         (b":path", path.encode()), *headers], end_stream=True)
        await self.flush()
        return stream_id

    async def next_event(self) -> h2.events.Event:
        while not self.events:
            data = await self.stream.receive_some(65536)
            assert data, "the gateway closed the connection"
            events = self.h2.receive_data(data)
            self.events.extend(events)
            self.resets += [e.stream_id for e in events if isinstance(e, h2.events.StreamReset)]
            await self.flush()
        return self.events.popleft()

    async def response(self, stream_id: int) -> tuple[int, bytes]:
        """Status and body of `stream_id`, acknowledging its data (events of other streams are dropped)."""
        status, body = 0, b""
        while True:
            event = await self.next_event()
            if getattr(event, "stream_id", None) != stream_id:
                continue
            if isinstance(event, h2.events.ResponseReceived):
                status = int(dict(event.headers)[b":status"])
            elif isinstance(event, h2.events.DataReceived):
                body += event.data
                self.h2.acknowledge_received_data(event.flow_controlled_length, stream_id)
            elif isinstance(event, h2.events.StreamEnded):
                return status, body
            elif isinstance(event, h2.events.StreamReset):
                raise AssertionError(f"stream {stream_id} reset: {event.error_code!r}")


async def test_get_over_h2_is_forwarded_with_authority_as_host_and_http1_still_works(nursery, tmp_path, app_port,
                                                                                      caplog):
    caplog.set_level(logging.INFO, logger="kakuremichi.gateway.access")
    gw = await start_h2_gateway(nursery, tmp_path, app_port)
    async with h2_client(gw.https_port) as client:
        response = await client.get("/hello?x=1", headers={"cookie": "a=1"})
    assert response.http_version == "HTTP/2"
    assert response.status_code == 200
    seen = response.json()
    assert seen["path"] == "/hello" and seen["query"] == "x=1"
    headers = seen["headers"]
    assert [v for n, v in headers if n == "host"] == [HOST]
    assert dict(headers)["x-forwarded-proto"] == "https"
    assert dict(headers)["x-forwarded-host"] == HOST
    assert dict(headers)["forwarded"] == f"for=127.0.0.1;host={HOST};proto=https"
    assert not any(n.startswith(":") for n, _ in headers)
    [line] = _access_lines(caplog)
    assert line["protocol"] == "h2" and line["scheme"] == "https" and line["status"] == 200
    assert line["path"] == "/hello" and line["host"] == HOST

    # Cookies an HTTP/2 client split into several fields reach the agent as one (RFC 9113 §8.2.3).
    raw = await RawH2Client.connect(gw.https_port)
    status, body = await raw.response(await raw.get("/c", [(b"cookie", b"a=1"), (b"cookie", b"b=2")]))
    assert status == 200
    assert [v for n, v in httpx.Response(200, content=body).json()["headers"] if n == "cookie"] == ["a=1; b=2"]

    async with httpx.AsyncClient(verify=False, headers={"host": HOST}) as client:
        plain = await client.get(f"https://127.0.0.1:{gw.https_port}/hello")
    assert plain.http_version == "HTTP/1.1" and plain.json()["path"] == "/hello"


async def test_concurrent_requests_share_one_connection(nursery, tmp_path, app_port):
    gw = await start_h2_gateway(nursery, tmp_path, app_port)
    relay = await relayed(nursery, gw)
    results = []
    async with h2_client(relay.port) as client:
        async def one(i: int) -> None:
            response = await client.get(f"/slow?delay=0.2&i={i}" if i % 2 else f"/item/{i}")
            results.append((response.http_version, response.status_code, i))

        async with trio.open_nursery() as requests:
            for i in range(20):
                requests.start_soon(one, i)
    assert sorted(results, key=lambda r: r[2]) == [("HTTP/2", 200, i) for i in range(20)]
    assert relay.accepted == 1


async def test_big_upload_and_download_through_one_stream(nursery, tmp_path, app_port):
    gw = await start_h2_gateway(nursery, tmp_path, app_port)
    upload = os.urandom(10 << 20)
    async with h2_client(gw.https_port) as client:
        response = await client.post("/upload", content=upload)
        assert response.http_version == "HTTP/2"
        assert response.json() == {"length": len(upload), "sha256": hashlib.sha256(upload).hexdigest()}

        async def unannounced():  # no content-length: sent to the agent chunked
            for i in range(0, len(upload), 1 << 20):
                yield upload[i:i + (1 << 20)]

        response = await client.post("/upload", content=unannounced())
        assert response.json() == {"length": len(upload), "sha256": hashlib.sha256(upload).hexdigest()}

        size = 20 << 20
        digest, length = hashlib.sha256(), 0
        async with client.stream("GET", f"/download?size={size}") as download:
            assert download.http_version == "HTTP/2"
            async for chunk in download.aiter_raw():
                digest.update(chunk)
                length += len(chunk)
    assert length == size and digest.hexdigest() == payload_sha256(size)


async def test_unknown_host_is_404_and_a_slow_stream_times_out_alone(nursery, tmp_path, app_port):
    """One stream waiting on a slow agent does not hold up another; the timeout leaves room enough for the
    quick one to finish first on a loaded machine."""
    gw = await start_h2_gateway(nursery, tmp_path, app_port, settings=ProxySettings(upstream_timeout=2.0))
    relay = await relayed(nursery, gw)
    finished = []
    async with h2_client(relay.port) as client:
        unknown = await client.get("/", headers={"host": "nowhere.test", "accept": "application/json"})
        assert unknown.http_version == "HTTP/2" and unknown.status_code == 404
        assert unknown.json()["code"] == "unknown_host"

        async def slow() -> None:
            response = await client.get("/slow?delay=10", headers={"accept": "application/json"})
            finished.append(("slow", response.status_code, response.json()["code"]))

        async def quick() -> None:
            response = await client.get(f"/download?size={1 << 20}")
            finished.append(("quick", response.status_code, len(response.content)))

        async with trio.open_nursery() as streams:
            streams.start_soon(slow)
            await trio.sleep(0.05)
            streams.start_soon(quick)
    assert finished == [("quick", 200, 1 << 20), ("slow", 504, "upstream_timeout")]
    assert relay.accepted == 1


async def test_a_reset_stream_leaves_the_others_and_its_agent_connection_is_not_pooled(nursery, tmp_path, app_port,
                                                                                         caplog):
    caplog.set_level(logging.INFO, logger="kakuremichi.gateway.access")
    dialled = []

    async def recording_dial(route):
        stream = await tcp_dial(route)
        dialled.append(stream)
        return stream

    gw = await start_h2_gateway(nursery, tmp_path, app_port, dial=recording_dial)
    client = await RawH2Client.connect(gw.https_port)
    other = await client.get("/slow?delay=0.5")
    download = await client.get(f"/download?size={50 << 20}")
    received = 0
    while received < 32768:  # the download is under way (and stalls once the window is used up)
        event = await client.next_event()
        if isinstance(event, h2.events.DataReceived) and event.stream_id == download:
            received += len(event.data)
    await trio.sleep(0.3)  # room for a gateway that ignores the client's window to keep sending
    client.h2.reset_stream(download)
    await client.flush()
    status, _ = await client.response(other)
    assert status == 200
    assert (await client.response(await client.get("/after")))[0] == 200  # the connection goes on
    with trio.fail_after(10):  # the others' connections go back to the pool after their responses
        while not (any(s.socket.fileno() == -1 for s in dialled) and gw.proxy.pool.idle_count(key := (
                "127.0.0.1", app_port))):
            await trio.sleep(0.01)
    closed = [s for s in dialled if s.socket.fileno() == -1]
    assert len(closed) == 1  # the download's agent connection, mid-message: closed, not pooled
    assert all(conn.stream is not closed[0] for conn in gw.proxy.pool._idle[key])
    lines = {line["path"]: line for line in _access_lines(caplog)}
    assert lines["/download"]["error"] == "client_reset" and lines["/download"]["protocol"] == "h2"
    # The client acknowledged nothing: the relay stopped at its window (64 KiB), plus the chunk in hand.
    assert 32768 <= lines["/download"]["bytes_out"] <= 65535 + 65536
    await client.stream.aclose()


async def test_idle_connection_gets_goaway_after_the_client_timeout(nursery, tmp_path, app_port):
    gw = await start_h2_gateway(nursery, tmp_path, app_port, settings=ProxySettings(client_timeout=0.3))
    client = await RawH2Client.connect(gw.https_port)
    assert (await client.response(await client.get("/")))[0] == 200
    with trio.fail_after(10):
        while not isinstance(event := await client.next_event(), h2.events.ConnectionTerminated):
            pass
    assert event.error_code == 0 and event.last_stream_id == 1
    assert await client.stream.receive_some() == b""


async def test_the_idle_timeout_counts_from_the_last_stream_not_from_the_last_read(nursery, tmp_path, app_port):
    # A stream longer than the client timeout, with the client silent meanwhile: the connection is idle
    # only once it ends, so a request soon after still gets its answer.
    gw = await start_h2_gateway(nursery, tmp_path, app_port, settings=ProxySettings(client_timeout=0.3))
    client = await RawH2Client.connect(gw.https_port)
    assert (await client.response(await client.get("/slow?delay=0.6")))[0] == 200
    await trio.sleep(0.1)  # idle for a third of the client timeout
    assert (await client.response(await client.get("/")))[0] == 200


async def test_malformed_requests_are_stream_errors_and_protocol_errors_get_goaway(nursery, tmp_path, app_port, caplog):
    caplog.set_level(logging.DEBUG, logger="kakuremichi.gateway.http2")
    gw = await start_h2_gateway(nursery, tmp_path, app_port)
    client = await RawH2Client.connect(gw.https_port, validate=False)
    for malformed in ([(b":method", b"GET"), (b":scheme", b"https"), (b":path", b"/")],  # no authority
                      [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", HOST.encode()),
                       (b":path", b"/"), (b"connection", b"close")],  # connection-specific
                      [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", HOST.encode()),
                       (b":path", b"/"), (b"X-Upper", b"1")],
                      [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", HOST.encode()),
                       (b":path", b"/"), (b"x-nul", b"a\x00b")],
                      [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", HOST.encode()),
                       (b":path", b"/"), (b"cookie", b"session=s3cr3t ")],  # whitespace around the value
                      [(b":method", b"POST"), (b":scheme", b"https"), (b":authority", HOST.encode()),
                       (b":path", b"/upload"), (b"content-length", b"5")]):  # but END_STREAM: no body
        stream_id = client.h2.get_next_available_stream_id()
        client.h2.send_headers(stream_id, malformed, end_stream=True)
        await client.flush()
        with pytest.raises(AssertionError, match="PROTOCOL_ERROR"):  # a stream error, not the connection's
            await client.response(stream_id)
    bad_host = client.h2.get_next_available_stream_id()
    client.h2.send_headers(bad_host, [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"a b"),
                                      (b":path", b"/")], end_stream=True)
    await client.flush()
    assert (await client.response(bad_host))[0] == 400
    absolute = client.h2.get_next_available_stream_id()  # :path must be origin-form (RFC 9113 §8.3.1)
    client.h2.send_headers(absolute, [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"nowhere.test"),
                                      (b":path", f"https://{HOST}/".encode())], end_stream=True)
    await client.flush()
    assert (await client.response(absolute))[0] == 400
    connect = client.h2.get_next_available_stream_id()
    client.h2.send_headers(connect, [(b":method", b"CONNECT"), (b":authority", HOST.encode() + b":443")],
                           end_stream=False)
    await client.flush()
    assert (await client.response(connect))[0] == 405

    # A frame on stream 0 that must not be there is a connection error: GOAWAY, then the end.
    await client.stream.send_all(b"\x00\x00\x01\x00\x00\x00\x00\x00\x00x")  # DATA on stream 0
    with trio.fail_after(10):
        while not isinstance(event := await client.next_event(), h2.events.ConnectionTerminated):
            pass
    assert event.error_code == h2.errors.ErrorCodes.PROTOCOL_ERROR
    assert "unexpected error contained" not in caplog.text
    logged = [str(r.fields) for r in caplog.records if r.name == "kakuremichi.gateway.http2"]
    assert any("whitespace" in line for line in logged) and not any("s3cr3t" in line for line in logged)


async def test_a_vanishing_client_cancels_its_exchanges_quietly(nursery, tmp_path, app_port, caplog):
    dialled = []

    async def recording_dial(route):
        dialled.append(await tcp_dial(route))
        return dialled[-1]

    gw = await start_h2_gateway(nursery, tmp_path, app_port, dial=recording_dial)
    client = await RawH2Client.connect(gw.https_port)
    await client.get(f"/download?size={50 << 20}")
    while not isinstance(await client.next_event(), h2.events.DataReceived):
        pass
    client.stream.transport_stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    await trio.aclose_forcefully(client.stream.transport_stream)  # RST: gone mid-download
    with trio.fail_after(10):
        while dialled[0].socket.fileno() != -1:
            await trio.sleep(0.01)
    assert "unexpected error contained" not in caplog.text


async def test_a_slow_agent_slows_the_uploading_client(nursery, tmp_path):
    """The request body's window goes back to the client only as the agent takes the bytes: an agent
    that stops reading stops the client, instead of the gateway buffering the upload."""
    agent_listener = trio.socket.socket()
    agent_listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    await agent_listener.bind(("127.0.0.1", 0))
    agent_listener.listen()
    accepted = []

    async def agent_that_never_reads():
        accepted.append((await agent_listener.accept())[0])
        await trio.sleep_forever()

    nursery.start_soon(agent_that_never_reads)
    gw = await start_h2_gateway(nursery, tmp_path, agent_listener.getsockname()[1])
    client = await RawH2Client.connect(gw.https_port)
    upload = client.h2.get_next_available_stream_id()
    client.h2.send_headers(upload, [(b":method", b"POST"), (b":scheme", b"https"), (b":authority", HOST.encode()),
                                    (b":path", b"/upload")])
    total, sent, chunk = 64 << 20, 0, b"x" * 16384
    while sent < total:
        room = min(client.h2.local_flow_control_window(upload), len(chunk))
        if room == 0:
            await client.flush()
            with trio.move_on_after(1) as stalled:  # no window update for a while: the client is held back
                while not isinstance(await client.next_event(), h2.events.WindowUpdated):
                    pass
            if stalled.cancelled_caught:
                break
            continue
        client.h2.send_data(upload, chunk[:room])
        sent += room
    assert accepted and sent < 16 << 20  # the stream window plus what the sockets on the way hold
    await client.stream.aclose()


async def test_oversized_headers_get_431_on_their_stream(nursery, tmp_path, app_port):
    gw = await start_h2_gateway(nursery, tmp_path, app_port, settings=ProxySettings(max_header_bytes=4096))
    client = await RawH2Client.connect(gw.https_port)
    assert (await client.response(await client.get("/", [(b"x-big", b"y" * 5000)])))[0] == 431
    assert (await client.response(await client.get("/")))[0] == 200  # the connection goes on


async def test_gateway_shutdown_says_goaway(nursery, tmp_path, app_port):
    async with trio.open_nursery() as gateway_nursery:
        gw = await start_h2_gateway(gateway_nursery, tmp_path, app_port)
        client = await RawH2Client.connect(gw.https_port)
        assert (await client.response(await client.get("/")))[0] == 200
        gateway_nursery.cancel_scope.cancel()
    with trio.fail_after(10):
        while not isinstance(event := await client.next_event(), h2.events.ConnectionTerminated):
            pass
    assert event.error_code == 0 and event.last_stream_id == 1


async def test_an_answer_to_a_complete_body_does_not_reset_the_stream(nursery, tmp_path, app_port):
    """The agent may answer once the announced content-length has arrived, before the client's END_STREAM:
    the stream is not reset then (clients like httpx would fail on sending that END_STREAM)."""
    gw = await start_h2_gateway(nursery, tmp_path, app_port)
    client = await RawH2Client.connect(gw.https_port)
    upload = client.h2.get_next_available_stream_id()
    client.h2.send_headers(upload, [(b":method", b"POST"), (b":scheme", b"https"), (b":authority", HOST.encode()),
                                    (b":path", b"/upload"), (b"content-length", b"5")])
    client.h2.send_data(upload, b"hello")
    await client.flush()
    status, body = await client.response(upload)  # fails on a reset of the stream
    assert status == 200 and b'"length": 5' in body
    assert (await client.response(await client.get("/")))[0] == 200  # whatever came before has arrived
    assert client.resets == []
    client.h2.end_stream(upload)
    await client.flush()
    assert (await client.response(await client.get("/")))[0] == 200

    # An answer before the body is complete asks the client to stop sending it (RFC 9113 §8.1).
    early = client.h2.get_next_available_stream_id()
    client.h2.send_headers(early, [(b":method", b"POST"), (b":scheme", b"https"), (b":authority", b"nowhere.test"),
                                   (b":path", b"/"), (b"content-length", b"100000")])
    client.h2.send_data(early, b"x" * 1000)
    await client.flush()
    assert (await client.response(early))[0] == 404
    assert (await client.response(await client.get("/")))[0] == 200
    assert client.resets == [early]


async def test_a_stream_over_the_concurrency_limit_is_refused_alone(nursery, tmp_path, app_port):
    """One stream more than MAX_CONCURRENT_STREAMS is reset with REFUSED_STREAM (the client may retry it);
    the connection and the streams already open go on. The streams take 3 s each, so that none has ended
    before the last one arrives, even on a loaded machine."""
    gw = await start_h2_gateway(nursery, tmp_path, app_port)
    client = await RawH2Client.connect(gw.https_port)  # sends before reading the limit, as a client may
    opened = [await client.get("/slow?delay=3") for _ in range(MAX_CONCURRENT_STREAMS + 1)]
    statuses: dict[int, int] = {}
    ended: set[int] = set()
    with trio.fail_after(30):
        while len(ended) + len(client.resets) < len(opened):
            event = await client.next_event()
            if isinstance(event, h2.events.ResponseReceived):
                statuses[event.stream_id] = int(dict(event.headers)[b":status"])
            elif isinstance(event, h2.events.DataReceived):
                client.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamEnded):
                ended.add(event.stream_id)
            elif isinstance(event, h2.events.StreamReset):
                assert event.error_code == h2.errors.ErrorCodes.REFUSED_STREAM
    assert client.resets == [opened[-1]]
    assert statuses == {stream_id: 200 for stream_id in opened[:-1]}
    assert (await client.response(await client.get("/")))[0] == 200  # the connection goes on


async def test_a_client_flooding_pings_without_reading_is_no_longer_read():
    """h2 answers every PING (and SETTINGS) by itself: a client that sends them without reading anything
    must not make the gateway pile up the answers; it stops reading such a client instead. Over a stream
    pair that makes each write wait for the reader, so "stops reading" shows exactly."""
    client_end, gateway_end = trio.testing.lockstep_stream_pair()
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    client.initiate_connection()
    client.ping(b"12345678")
    preface_and_ping = client.data_to_send()
    ping = preface_and_ping[-17:]
    flood = ping * (3 * _READ_AHEAD // len(ping))
    sent = 0

    async def send() -> None:
        nonlocal sent
        with contextlib.suppress(trio.ClosedResourceError):  # until the test hangs up
            await client_end.send_all(preface_and_ping)
            for i in range(0, len(flood), 16384):
                await client_end.send_all(flood[i:i + 16384])
                sent += 16384

    async with open_proxy(RouteTable([]), tcp_dial) as proxy, trio.open_nursery() as nursery:
        nursery.start_soon(serve_http2, proxy, gateway_end, "127.0.0.1")
        nursery.start_soon(send)
        await trio.testing.wait_all_tasks_blocked()
        assert sent <= _READ_AHEAD + 2 * CHUNK
        await client_end.aclose()
        nursery.cancel_scope.cancel()


async def test_empty_data_frames_are_not_queued(nursery, tmp_path, app_port):
    """Flow control bounds the request body bytes queued while the agent is being reached, but empty DATA
    frames use no window: a client sending them by the thousand must not grow the stream's queue."""
    async def unanswered_dial(route):
        await trio.sleep_forever()

    gw = await start_h2_gateway(nursery, tmp_path, app_port, dial=unanswered_dial)
    client = await RawH2Client.connect(gw.https_port)
    upload = client.h2.get_next_available_stream_id()
    client.h2.send_headers(upload, [(b":method", b"POST"), (b":scheme", b"https"), (b":authority", HOST.encode()),
                                    (b":path", b"/upload")])
    client.h2.send_data(upload, b"x")
    for _ in range(10000):
        client.h2.send_data(upload, b"")
    client.h2.ping(b"all read")  # answered once everything before it has been read
    await client.flush()
    while not isinstance(await client.next_event(), h2.events.PingAckReceived):
        pass
    [stream] = [w for guard in gw.proxy.watchdog._guards for w in guard.waiters if isinstance(w, Http2Stream)]
    assert [len(data) for data, _ in stream._body] == [1]
    await client.stream.aclose()


async def test_a_client_goaway_ends_the_connection(nursery, tmp_path, app_port):
    """After the client's GOAWAY h2 sends nothing more on the connection, not even for open streams: the
    gateway closes it then, instead of leaving the client waiting for answers until the client timeout."""
    gw = await start_h2_gateway(nursery, tmp_path, app_port)
    client = await RawH2Client.connect(gw.https_port)
    await client.get("/slow?delay=0.2")
    client.h2.close_connection()
    await client.flush()
    with trio.fail_after(10):  # the client timeout is 60 s
        while await client.stream.receive_some():
            pass


async def test_a_client_that_never_opens_the_window_times_out_after_sending_its_body(nursery, tmp_path, app_port):
    # The body arriving while the response waits for window must not clear that wait's client timeout.
    gw = await start_h2_gateway(nursery, tmp_path, app_port, settings=ProxySettings(client_timeout=0.3))
    client = await RawH2Client.connect(gw.https_port)
    client.h2.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1})
    stream_id = client.h2.get_next_available_stream_id()
    client.h2.send_headers(stream_id, [(b":method", b"POST"), (b":scheme", b"https"),
                                       (b":authority", HOST.encode()), (b":path", b"/download?size=100000")])
    await client.flush()
    while not isinstance(event := await client.next_event(), h2.events.ResponseReceived):
        pass
    assert event.stream_id == stream_id  # the response now waits for a window the client never opens
    client.h2.send_data(stream_id, b"body", end_stream=True)
    await client.flush()
    with trio.fail_after(10):
        while stream_id not in client.resets:
            await client.next_event()


async def test_a_method_with_control_characters_stays_out_of_the_access_log(nursery, tmp_path, app_port, caplog):
    # h2 refuses only NUL, CR and LF in values: a terminal escape in :method must not reach the log as it is.
    caplog.set_level(logging.INFO, logger="kakuremichi.gateway.access")
    gw = await start_h2_gateway(nursery, tmp_path, app_port)
    client = await RawH2Client.connect(gw.https_port, validate=False)
    stream_id = client.h2.get_next_available_stream_id()
    client.h2.send_headers(stream_id, [(b":method", b"GE\x1b[2JT"), (b":scheme", b"https"),
                                       (b":authority", HOST.encode()), (b":path", b"/")], end_stream=True)
    await client.flush()
    assert (await client.response(stream_id))[0] == 400
    with trio.fail_after(5):
        while not _access_lines(caplog):  # written as the stream's task ends, which may follow the answer
            await trio.sleep(0.01)
    (line,) = _access_lines(caplog)
    assert line["status"] == 400 and "\x1b" not in line["method"]


async def test_a_malformed_request_reset_by_the_client_at_once_leaves_the_connection(nursery, tmp_path, app_port):
    """HEADERS then RST_STREAM in one read: the stream is closed before the gateway refuses it; that refusal
    broke the whole connection (h2's StreamClosedError escaped). Found by tests/fuzz/test_gateway_http.py."""
    gw = await start_h2_gateway(nursery, tmp_path, app_port)
    client = await RawH2Client.connect(gw.https_port, validate=False)
    stream_id = client.h2.get_next_available_stream_id()
    client.h2.send_headers(stream_id, [(b":method", b"GET"), (b":scheme", b"https"), (b":path", b"/")])  # no authority
    client.h2.reset_stream(stream_id)
    await client.flush()
    status, _ = await client.response(await client.get("/after"))
    assert status == 200
    assert gw.proxy.faults.total == 0
