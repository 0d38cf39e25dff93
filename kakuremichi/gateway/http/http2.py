"""HTTP/2 for HTTPS clients that negotiate it (ALPN "h2"): many requests multiplexed on one connection.

The h2 library is the sans-IO core (frames, HPACK, stream states, flow-control accounting); this
module drives it. One task reads and feeds bytes, one writes whatever h2 has to send (so two writes
never overlap on the TLS stream), and each request stream runs as its own task through the engine's
routing, forwarding headers, upstream pool, timeouts and error pages, talking HTTP/1.1 to the agent.

Flow control is end to end: request body bytes are acknowledged to the client only once forwarded to
the agent, and response bytes leave only as the client's windows open and the previous ones have been
written, so a slow side slows the other down instead of filling the gateway's memory. No extended
CONNECT is offered: browsers then open WebSockets over HTTP/1.1.
"""

from __future__ import annotations

import logging
import math
import re
from collections import deque

import h11
import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import h2.utilities
import trio
from h2.errors import ErrorCodes

from kakuremichi import h1parse
from kakuremichi.gateway.http import errorpages
from kakuremichi.gateway.http.accesslog import AccessRecord
from kakuremichi.gateway.http.connection import CHUNK, STREAM_ERRORS
from kakuremichi.gateway.http.engine import END, Abort, Engine
from kakuremichi.gateway.http.errorpages import GatewayError
from kakuremichi.gateway.http.forwarding import response_headers
from kakuremichi.gateway.http.origin import ClientOrigin
from kakuremichi.gateway.http.timeouts import Waits
from kakuremichi.gateway.http.upstream import UpstreamConnection
from kakuremichi.logs import log

logger = logging.getLogger("kakuremichi.gateway.http2")

MAX_CONCURRENT_STREAMS = 100
STREAM_WINDOW = 1 << 18  # request body bytes a stream may have in flight towards the gateway
CONNECTION_WINDOW = 1 << 20  # and all streams of a connection together: the most buffered per connection
_READ_AHEAD = 2 * CONNECTION_WINDOW  # client bytes read while one write is stuck, before reading pauses
_GOODBYE_TIMEOUT = 1.0  # for the last GOAWAY of a connection that is closing anyway
_REQUEST_HEADERS = h2.utilities.HeaderValidationFlags(is_client=False, is_trailer=False, is_response_header=False,
                                                       is_push_promise=False)
_BYTES_LITERAL = re.compile(r"b'(?:[^'\\]|\\.)*'" r'|b"(?:[^"\\]|\\.)*"')
_INITIAL_WINDOW = 65535  # every window's size before SETTINGS change it (RFC 9113 §6.9.2)


def _redacted(exc: h2.exceptions.ProtocolError) -> str:
    """h2's message without the header names and values it quotes: those may be cookies or credentials."""
    return _BYTES_LITERAL.sub("…", str(exc))


class _LocalSettings(h2.settings.Settings):
    """The settings the gateway advertises, but with no stream limit for h2 to enforce: h2 would end the
    whole connection for a stream too many, where the gateway refuses just that stream (RFC 9113 §5.1.2)."""

    @property
    def max_concurrent_streams(self) -> int:
        return 2**32 + 1  # h2's "unlimited"


async def serve_http2(engine: Engine, stream: trio.abc.Stream, peer_ip: str) -> None:
    """Serve one HTTP/2 client connection (TLS already negotiated "h2") until it closes, idles out or breaks."""
    await Http2Connection(engine, stream, peer_ip).serve()


class Http2Connection(Waits):
    """One client connection: its h2 state, its open streams, its reader and writer.

    As a watchdog waiter its `deadline` is the client timeout of whichever applies: a write the client
    does not take, or the read loop's wait while no stream is open (the connection sitting idle)."""

    def __init__(self, engine: Engine, stream: trio.abc.Stream, peer_ip: str) -> None:
        super().__init__()
        self.engine = engine
        self.stream = stream
        self.peer_ip = peer_ip
        self.origin = ClientOrigin(stream)  # every stream's: they share the connection's address
        self.timeout = engine.settings.client_timeout
        # Request headers are validated here, stream by stream: h2 would make a malformed request a
        # connection error, where RFC 9113 §8.1.1 wants a stream error.
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=False, header_encoding=None, validate_inbound_headers=False))
        max_headers = engine.settings.max_header_bytes
        self.h2.local_settings = _LocalSettings(client=False, initial_values={
            h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: MAX_CONCURRENT_STREAMS,
            h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: max_headers,
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
        })
        # The engine answers a header list over its limit with 431 on the stream; only one far beyond
        # what was advertised makes h2 end the connection (an HPACK bomb).
        self.h2.decoder.max_header_list_size = 2 * max_headers
        self.streams: dict[int, Http2Stream] = {}
        self._nursery: trio.Nursery | None = None
        self._read_while_writing = 0  # client bytes read since the write under way began
        self._dirty = trio.Event()  # h2 has bytes to send
        self._closing = False
        self._requested = self._written = 0  # flush tickets handed out / written
        self._flushed = trio.Event()
        self.window_opened = trio.Event()  # the client granted more sending room somewhere

    @property
    def deadline(self) -> float:
        return min(self.write_until, math.inf if self.streams else self.read_until)

    async def serve(self) -> None:
        self.h2.initiate_connection()
        self.h2.increment_flow_control_window(CONNECTION_WINDOW - _INITIAL_WINDOW)
        with self.engine.watchdog.guard(self):
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._write_loop)
                    self.wake()
                    try:
                        async with trio.open_nursery() as streams:
                            self._nursery = streams
                            await self._read_loop()
                            streams.cancel_scope.cancel()
                    finally:
                        self._closing = True  # the writer sends the GOAWAY and what precedes it, then ends
                        self._say_goodbye()
            except* STREAM_ERRORS:
                pass  # the client vanished: its streams were cancelled with the nursery
            finally:
                await self.engine.pool.retire(self.origin)
                with trio.CancelScope(shield=True, deadline=trio.current_time() + _GOODBYE_TIMEOUT):
                    await self._last_words()

    async def _read_loop(self) -> None:
        """Feed the client's bytes to h2 and act on its events, until EOF or a connection error."""
        while True:
            self.start_read(self.timeout)  # never ended: the read loop always reads
            data = await self.stream.receive_some(CHUNK)
            if not data:
                return
            if self.write_until != math.inf:
                # h2 answers PING and SETTINGS by itself: a client that sends them without reading our
                # side would have the answers pile up. Legitimate traffic is bounded by the windows.
                self._read_while_writing += len(data)
                if self._read_while_writing > _READ_AHEAD:
                    await self.flush()
            try:
                events = self.h2.receive_data(data)
            except h2.exceptions.ProtocolError as exc:
                log(logger, logging.DEBUG, "HTTP/2 protocol error", client=self.peer_ip, error=_redacted(exc))
                return  # h2 queued the GOAWAY saying why
            for event in events:
                if not self._dispatch(event):
                    return
            self.wake()

    def _dispatch(self, event: h2.events.Event) -> bool:
        """Act on one h2 event; False when the connection is over."""
        if isinstance(event, h2.events.DataReceived):
            stream = self.streams.get(event.stream_id)
            if stream is None or not stream.accept_body(event.data, event.flow_controlled_length):
                self.acknowledge(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, h2.events.RequestReceived):
            # Streams the client has not closed count too: h2's count, streams answered but still open.
            if len(self.streams) >= MAX_CONCURRENT_STREAMS or self.h2.open_inbound_streams > MAX_CONCURRENT_STREAMS:
                self._refuse(event.stream_id, ErrorCodes.REFUSED_STREAM, "too_many_streams",
                             f"more than {MAX_CONCURRENT_STREAMS} concurrent streams")
                return True
            try:
                headers = list(h2.utilities.validate_headers(event.headers, _REQUEST_HEADERS))
            except h2.exceptions.ProtocolError as exc:
                self._refuse(event.stream_id, ErrorCodes.PROTOCOL_ERROR, "bad_request",
                             f"malformed request: {_redacted(exc)}")
                return True
            if event.stream_ended is not None and any(n == b"content-length" and v.lstrip(b"0")
                                                      for n, v in headers):
                # h2 checks a content-length against DATA frames only: a body announced, then none.
                self._refuse(event.stream_id, ErrorCodes.PROTOCOL_ERROR, "bad_request",
                             "malformed request: content-length without a body")
                return True
            stream = Http2Stream(self, event.stream_id, headers, ended=event.stream_ended is not None)
            self.streams[event.stream_id] = stream
            self._nursery.start_soon(stream.run)
        elif isinstance(event, h2.events.StreamEnded):
            if (stream := self.streams.get(event.stream_id)) is not None:
                stream.end_body()
        elif isinstance(event, h2.events.StreamReset):
            if (stream := self.streams.get(event.stream_id)) is not None:
                stream.reset_by_client()
        elif isinstance(event, (h2.events.WindowUpdated, h2.events.RemoteSettingsChanged)):
            self.window_opened.set()
            self.window_opened = trio.Event()
        elif isinstance(event, h2.events.ConnectionTerminated):
            return False  # h2 sends nothing after the client's GOAWAY, so open streams could not be answered
        return True

    def _refuse(self, stream_id: int, code: ErrorCodes, error: str, why: str) -> None:
        """Reset a request stream without serving it: a malformed request is a stream error of type
        PROTOCOL_ERROR (RFC 9113 §8.1.1), one stream too many is REFUSED_STREAM (safe to retry)."""
        try:
            self.h2.reset_stream(stream_id, code)
        except h2.exceptions.StreamClosedError:
            pass  # the client reset it in the same read (its RST_STREAM came after its HEADERS)
        record = AccessRecord(client=self.peer_ip, scheme="https")
        record.protocol, record.error = "h2", error
        record.emit()
        log(logger, logging.DEBUG, "HTTP/2 request refused", client=self.peer_ip, error=why)

    def acknowledge(self, length: int, stream_id: int) -> None:
        """Give `length` received bytes of window back to the client (sent with the next write)."""
        if length:
            try:
                self.h2.acknowledge_received_data(length, stream_id)
            except h2.exceptions.ProtocolError:
                pass  # the connection is closing

    def stream_done(self, stream: Http2Stream) -> None:
        del self.streams[stream.id]
        if not self.streams:
            self.restart_read(self.timeout)  # idle from now
        self.wake()

    def wake(self) -> int:
        """Have the writer send what h2 has; returns the ticket `flush` waits for."""
        self._requested += 1
        self._dirty.set()
        return self._requested

    async def flush(self) -> None:
        """Wait until everything h2 had to send so far is written: the backpressure of a slow client."""
        ticket = self.wake()
        while self._written < ticket:
            await self._flushed.wait()

    async def _write_loop(self) -> None:
        """The only writer: h2's bytes leave in order, one send_all at a time; ends once closing is done."""
        while not (self._closing and not self._dirty.is_set()):
            await self._dirty.wait()
            self._dirty = trio.Event()
            ticket = self._requested
            data = self.h2.data_to_send()
            if data:
                self.start_write(self.timeout)
                try:
                    await self.stream.send_all(data)
                finally:
                    self.end_write()
                    self._read_while_writing = 0
            self._written = ticket
            self._flushed.set()
            self._flushed = trio.Event()

    def _say_goodbye(self) -> None:
        """GOAWAY, unless h2 already queued one for a protocol error."""
        if self.h2.state_machine.state is not h2.connection.ConnectionState.CLOSED:
            self.h2.close_connection()
        self.wake()

    async def _last_words(self) -> None:
        """What the writer had no chance to send (the gateway is shutting down): one try, if it is free."""
        data = self.h2.data_to_send()
        if data:
            try:
                await self.stream.send_all(data)
            except (*STREAM_ERRORS, trio.BusyResourceError):
                pass


class Http2Stream(Waits):
    """One request stream: proxied like an HTTP/1.1 request, answered on this stream only.

    As a watchdog waiter its `deadline` is the client timeout while it waits for the client: for request
    body (a read) or for window to send the response (a write), in two tasks at the same time."""

    __slots__ = ("conn", "id", "headers", "ended", "responded", "_end_sent",
                 "_reset_sent", "_body", "_body_arrived", "_unsent", "_discarding", "_reset", "_scope")

    def __init__(self, conn: Http2Connection, stream_id: int, headers: list[tuple[bytes, bytes]], *,
                 ended: bool) -> None:
        super().__init__()
        self.conn = conn
        self.id = stream_id
        self.headers = headers
        self.ended = ended  # the client has sent all of its request
        self.responded = False  # response headers sent: an error can now only reset the stream
        self._end_sent = self._reset_sent = False  # our side of the stream is closed
        self._body: deque[tuple[bytes, int]] = deque()  # received, not yet forwarded (bounded by the window)
        self._body_arrived = trio.Event()
        self._unsent: int | None = None  # body bytes the content-length still announces
        self._discarding = False  # nobody will forward more of the body: acknowledge it as it comes
        self._reset = False
        self._scope = trio.CancelScope()

    @property
    def origin(self) -> ClientOrigin:
        return self.conn.origin

    # Called by the connection's reader.

    def accept_body(self, data: bytes, length: int) -> bool:
        """Queue request body bytes for the agent; False when they are not wanted (acknowledge them now).
        Empty DATA frames cost the client no window: queueing them would let it fill our memory."""
        if self._discarding or not data:
            return False
        self._body.append((data, length))
        self._body_arrived.set()
        return True

    def end_body(self) -> None:
        self.ended = True
        self._body_arrived.set()

    def reset_by_client(self) -> None:
        self._reset = True
        self._scope.cancel()

    # The stream's own task.

    async def run(self) -> None:
        engine = self.conn.engine
        record = AccessRecord(client=self.conn.peer_ip, scheme="https")
        record.protocol = "h2"
        request = error = None
        try:
            with self._scope:
                guard = engine.watchdog.guard(self)
                with guard:
                    try:
                        request = self._request(record)
                        engine.begin(record, request, self.conn.peer_ip)
                        raw_host, host, target = engine.resolve(request, record)
                        route = engine.route_for(host)
                        upstream_request = engine.upstream_request(request, raw_host, host, target, "https",
                                                                  self.conn.peer_ip)
                        upstream_request = await engine.admit(self, upstream_request, route, host, "https", record)
                        with engine.routes.hold(route, guard.scope):
                            await engine.exchange(self, upstream_request, not self.ended, route, host, record,
                                                  guard)
                    except GatewayError as exc:
                        error = exc
                    except Abort:
                        self._send_reset(ErrorCodes.INTERNAL_ERROR)
                if guard.scope.cancelled_caught:
                    error = self._interrupted(guard, record)
                if error is not None:
                    with engine.watchdog.guard(self):
                        await self._answer(error, request, record)
            if self._reset:
                record.error = record.error or "client_reset"
        finally:
            self._finish()
            engine.finish(record)

    def _request(self, record: AccessRecord) -> h11.Request:
        """The HTTP/1.1 form of the request: :path in origin form, :authority becomes Host (RFC 9113 §8.3.1),
        and a body of unannounced length will be sent chunked (h2 has already joined split cookies, §8.2.3)."""
        pseudo: dict[bytes, bytes] = {}
        headers: list[tuple[bytes, bytes]] = []
        for name, value in self.headers:
            if name.startswith(b":"):
                pseudo[name] = value
            else:
                headers.append((name, value))
        if pseudo.get(b":method") == b"CONNECT":  # no tunnels, and no extended CONNECT (WebSocket) was offered
            record.method = "CONNECT"  # other methods are logged once h11 has checked them (begin)
            raise errorpages.method_not_allowed("CONNECT")
        path = pseudo.get(b":path", b"/")
        if not path.startswith(b"/") and path != b"*":  # an absolute URI would override :authority in routing
            raise errorpages.bad_request("The :path must be a path (RFC 9113 §8.3.1).")
        authority = pseudo.get(b":authority")
        if authority is not None:
            headers = [(n, v) for n, v in headers if n != b"host"]
            headers.insert(0, (b"host", authority))
        lengths = [v for n, v in headers if n == b"content-length"]
        if not self.ended and not lengths:
            headers.append((b"transfer-encoding", b"chunked"))
        try:
            request = h11.Request(method=pseudo[b":method"], target=pseudo[b":path"], headers=headers)
        except (KeyError, h11.LocalProtocolError) as exc:
            raise errorpages.bad_request(f"Malformed request: {exc}.") from None
        if not self.ended and lengths:
            self._unsent = int(lengths[0])  # h11 has checked that it is a number
        return request

    def _interrupted(self, guard, record: AccessRecord) -> GatewayError | None:
        """Why the stream's guard was cancelled, as the error to answer (None: the client is too slow)."""
        if guard.expired is self:
            record.error = "client_timeout"
            self._send_reset(ErrorCodes.CANCEL)
            return None
        return self.conn.engine.interrupted(guard, record)

    # The ClientSide of the engine's exchange.

    async def pump_request_body(self, upstream: UpstreamConnection, record: AccessRecord,
                                scope: trio.CancelScope) -> None:
        """Client body → agent; each piece's window goes back to the client once the agent has it."""
        try:
            while True:
                await self._body_or_end()
                if not self._body:
                    # Done: the client ended the stream, or sent all the announced bytes (the agent
                    # may answer before the END_STREAM that follows: no reason to reset the stream then).
                    await self.conn.engine.upstream_send(upstream, END, body=True)
                    return
                data, length = self._body.popleft()
                record.bytes_in += len(data)
                if self._unsent is not None:
                    self._unsent -= len(data)
                await self.conn.engine.upstream_send(upstream, h1parse.Data(data), body=True)
                self.conn.acknowledge(length, self.id)
                self.conn.wake()
        except Abort:
            self._discard_body()  # the agent stopped reading; it may be answering already

    async def read_body(self, limit: int) -> bytes:
        data = bytearray()
        while True:
            await self._body_or_end()
            if not self._body:
                return bytes(data)
            piece, length = self._body.popleft()
            if self._unsent is not None:
                self._unsent -= len(piece)
            self.conn.acknowledge(length, self.id)
            self.conn.wake()
            data += piece
            if len(data) > limit:
                raise errorpages.bad_request(f"The form is larger than {limit} bytes.", 413)

    async def _body_or_end(self) -> None:
        """Wait (under the client timeout) until body bytes are queued or the client has sent them all."""
        while not self._body and not self.ended and self._unsent != 0:
            self._body_arrived = trio.Event()
            self.start_read(self.conn.timeout)
            try:
                await self._body_arrived.wait()
            finally:
                self.end_read()

    async def relay_response(self, upstream: UpstreamConnection, host: str, replayable: bool,
                             record: AccessRecord, hsts: bool) -> None:
        engine = self.conn.engine
        timeout = engine.settings.upstream_timeout
        while True:
            event = await engine.response_event(upstream, host, replayable)
            if not isinstance(event, h1parse.InformationalResponse):
                break
            if event.status_code == 101:
                raise errorpages.agent_unreachable(host)  # nothing asked for an upgrade
            self._send_headers(event, end=False)  # 100 Continue, 103 Early Hints
            await self.conn.flush()
        if not isinstance(event, h1parse.Response):
            raise errorpages.agent_unreachable(host)
        record.status = event.status_code
        self._send_headers(event, end=False, hsts=hsts)
        self.responded = True
        while True:
            try:
                event = upstream.buffered_event()
                if event is None:
                    await self.conn.flush()
                    event = await upstream.next_event(timeout)
            except (h1parse.Malformed, *STREAM_ERRORS):
                raise Abort() from None  # mid-body: the reset shows the truncation
            if isinstance(event, h1parse.Data):
                record.bytes_out += len(event.data)
                await self._send_data(event.data)
            elif isinstance(event, h1parse.EndOfMessage):
                await self._send_data(b"", end=True)
                await self.conn.flush()
                return
            else:
                raise Abort()

    # Sending on the stream.

    def _send_headers(self, response: h1parse.Response, *, end: bool,
                      hsts: bool = False) -> None:
        """Response headers without the connection-specific fields HTTP/2 forbids (RFC 9113 §8.2.2)."""
        headers = [(b":status", b"%d" % response.status_code)]
        headers += response_headers(response.headers, hsts)
        try:
            self.conn.h2.send_headers(self.id, headers, end_stream=end)
        except h2.exceptions.ProtocolError:
            raise Abort() from None

    async def _send_data(self, data: bytes, *, end: bool = False) -> None:
        """Send `data` as the client's windows allow, waiting for WINDOW_UPDATEs (under the client timeout)."""
        conn = self.conn
        data = memoryview(data)  # frames are slices of it, not copies
        while True:
            try:
                room = min(conn.h2.local_flow_control_window(self.id), conn.h2.max_outbound_frame_size)
                if room >= len(data):
                    conn.h2.send_data(self.id, data, end_stream=end)
                    self._end_sent = end
                    return
                if room > 0:
                    conn.h2.send_data(self.id, data[:room])
                    data = data[room:]
                    conn.wake()
                    continue
            except h2.exceptions.ProtocolError:
                raise Abort() from None
            opened = conn.window_opened
            self.start_write(conn.timeout)
            try:
                await opened.wait()
            finally:
                self.end_write()

    async def _answer(self, error: GatewayError, request: h11.Request | None, record: AccessRecord) -> None:
        """The error page on this stream; once the response began, only a reset can say something broke."""
        record.error = record.error or error.code
        if self.responded:
            self._send_reset(ErrorCodes.INTERNAL_ERROR)
            return
        accept = b", ".join(v for n, v in request.headers if n == b"accept") if request is not None else b""
        headers, body = errorpages.render(error, accept)
        record.status = error.status
        try:
            try:
                self.conn.h2.send_headers(self.id, [(b":status", b"%d" % error.status)] + headers)
            except h2.exceptions.ProtocolError:
                raise Abort() from None
            self.responded = True
            await self._send_data(body, end=True)
            await self.conn.flush()
        except Abort:
            self._send_reset(ErrorCodes.INTERNAL_ERROR)

    def _send_reset(self, code: ErrorCodes) -> None:
        self._reset_sent = True
        try:
            self.conn.h2.reset_stream(self.id, code)
        except h2.exceptions.ProtocolError:
            pass  # already closed

    def _discard_body(self) -> None:
        """From now on the request body is only acknowledged, never forwarded."""
        self._discarding = True
        while self._body:
            self.conn.acknowledge(self._body.popleft()[1], self.id)

    def _finish(self) -> None:
        """Leave the connection: unforwarded body bytes are acknowledged (the connection's window must
        not shrink for good), a client still sending a request that has its answer is asked to stop
        (RST_STREAM NO_ERROR, RFC 9113 §8.1), and a stream left unanswered is reset."""
        self._discard_body()
        if not (self._reset or self._reset_sent):
            if not self._end_sent:
                self._send_reset(ErrorCodes.INTERNAL_ERROR)
            elif not self.ended and self._unsent != 0:
                self._send_reset(ErrorCodes.NO_ERROR)
        self.conn.stream_done(self)
