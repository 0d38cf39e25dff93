"""The HTTP/1.1 front: one client connection, its requests one after another, each through the engine.

The front reads each request with h1parse, answers by itself what only the gateway can (ACME challenges,
HTTPS redirects, the error pages the engine raises), and is the ClientSide of every exchange: it
pumps the request body to the agent and relays the agent's response, both streamed chunk by chunk.
An Upgrade answered with 101 turns the exchange into a plain byte pipe (WebSocket).
"""

from __future__ import annotations

import trio

from kakuremichi import h1parse
from kakuremichi.gateway.http import errorpages
from kakuremichi.gateway.http.accesslog import AccessRecord
from kakuremichi.gateway.http.connection import CHUNK, STREAM_ERRORS, HttpConnection
from kakuremichi.gateway.http.engine import END, Abort, Engine
from kakuremichi.gateway.http.errorpages import GatewayError
from kakuremichi.gateway.http.forwarding import response_headers
from kakuremichi.gateway.http.origin import ClientOrigin
from kakuremichi.gateway.http.timeouts import Guard
from kakuremichi.gateway.http.upstream import QUIET_KEEPALIVE, UpstreamConnection, keepalive
from kakuremichi.gateway.routes import TlsMode
from kakuremichi.httpheaders import strip_hop_by_hop
from kakuremichi.pipe import splice

_DISCARD_LIMIT = 1 << 20  # request body bytes read away after answering early, to keep the connection


async def serve_http1(engine: Engine, stream: trio.abc.Stream, *, scheme: str, peer_ip: str) -> None:
    """Serve one HTTP/1.1 client connection (already TLS-unwrapped for https) until it closes or idles out."""
    await Http1Connection(engine, stream, scheme, peer_ip).serve()


class Http1Connection:
    """One client connection: its request cycles, and the ClientSide of each exchange (engine.py)."""

    __slots__ = ("engine", "client", "scheme", "peer_ip", "client_timeout", "upstream_timeout", "origin")

    def __init__(self, engine: Engine, stream: trio.abc.Stream, scheme: str, peer_ip: str) -> None:
        self.engine = engine
        self.client = HttpConnection(stream, server=True, max_header_bytes=engine.settings.max_header_bytes)
        self.scheme, self.peer_ip = scheme, peer_ip
        self.client_timeout = engine.settings.client_timeout
        self.upstream_timeout = engine.settings.upstream_timeout
        self.origin = ClientOrigin(stream)

    async def serve(self) -> None:
        """Each request cycle runs under one guard: the client's and the agent's waits time out through it,
        and a config change withdrawing the route cancels it. A gateway error found on the way is answered
        after the guard closes, so even a timed-out exchange can still tell the client why."""
        client, watchdog = self.client, self.engine.watchdog
        try:
            while True:
                record = AccessRecord(client=self.peer_ip, scheme=self.scheme)
                request = error = None
                guard = watchdog.guard(client)
                with guard:
                    try:
                        request = await client.next_event(self.client_timeout)
                    except h1parse.Malformed as exc:
                        if client.http.our_state is not h1parse.IDLE:
                            return
                        record.error = "bad_request"
                        error = errorpages.bad_request(f"Malformed request: {exc}.", exc.status)
                    else:
                        if not isinstance(request, h1parse.Request):
                            return  # ConnectionClosed: the client is done
                        error = await self._handle(request, record, guard)
                if guard.scope.cancelled_caught:
                    if request is None:
                        return  # idle past the client timeout
                    error = self._interrupted(guard, record)
                if error is not None:
                    with watchdog.guard(client):
                        await self._answer(error, request, record)
                self.engine.finish(record)
                if request is None or client.peer_erred:
                    # malformed: read away what it still sends so the answer arrives
                    await _linger(client.stream)
                    return
                if not client.reusable:
                    return
                client.start_next_cycle()
        except STREAM_ERRORS:
            pass  # vanished client: just close
        finally:
            await self.engine.pool.retire(self.origin)
            await client.aclose()

    async def _handle(self, request: h1parse.Request, record: AccessRecord, guard: Guard) -> GatewayError | None:
        """Route and relay one request; an error the gateway must answer is returned, not sent."""
        engine, scheme = self.engine, self.scheme
        engine.begin(record, request, self.peer_ip)
        try:
            raw_host, host, target = engine.resolve(request, record)
            if scheme == "http" and engine.challenges is not None:
                answer = engine.challenges.answer(target, host)
                if answer is not None:
                    await self._respond(200, [(b"content-type", b"text/plain")], answer, record)
                    return None
            route = engine.route_for(host)
            if scheme == "http" and route.force_https and route.tls is not TlsMode.OFF:
                await self._redirect(host, target, record)
                return None
            upstream_request = engine.upstream_request(request, raw_host, host, target, scheme, self.peer_ip)
            upstream_request = await engine.admit(self, upstream_request, route, host, scheme, record)
            has_body = _declares_body(upstream_request)
            if not has_body:
                await self._event()  # the end the parser has ready for body-less requests
            with engine.routes.hold(route, guard.scope):
                await engine.exchange(self, upstream_request, has_body, route, host, record, guard)
        except GatewayError as error:
            return error
        except Abort:
            self.client.http.send_failed()
        return None

    def _interrupted(self, guard: Guard, record: AccessRecord) -> GatewayError | None:
        """Why a request's guard was cancelled, as the error to answer (None: the client just goes)."""
        if guard.expired is self.client:
            record.error = "client_timeout"
            self.client.http.send_failed()
            return None
        return self.engine.interrupted(guard, record)

    # The ClientSide of the engine's exchange.

    async def relay_response(self, upstream: UpstreamConnection, host: str, replayable: bool,
                             record: AccessRecord, hsts: bool) -> None:
        while True:
            event = await self.engine.response_event(upstream, host, replayable)
            if isinstance(event, h1parse.InformationalResponse) and event.status_code == 101:
                await self._switch_protocols(upstream, event, record)
                return
            if not isinstance(event, h1parse.InformationalResponse):
                break
            await self._send(event)  # 100 Continue, 103 Early Hints
        if not isinstance(event, h1parse.Response):
            raise errorpages.agent_unreachable(host)
        record.status = event.status_code
        self._queue(h1parse.Response(event.status_code, response_headers(event.headers, hsts, keep=[b"content-length"]),
                                     event.reason))
        while True:
            # Relay what already arrived in one write; wait for the agent only when nothing is left.
            try:
                event = upstream.buffered_event()
                if event is None:
                    await self._flush()
                    event = await upstream.next_event(self.upstream_timeout)
            except (h1parse.Malformed, *STREAM_ERRORS):
                raise Abort() from None  # mid-body: truncation must show, so the client connection dies
            if isinstance(event, h1parse.Data):
                record.bytes_out += len(event.data)
                self._queue(event)
            elif isinstance(event, h1parse.EndOfMessage):
                self._queue(END)
                await self._flush()
                return
            else:
                raise Abort()  # nothing else can come mid-body

    async def pump_request_body(self, upstream: UpstreamConnection, record: AccessRecord,
                                scope: trio.CancelScope) -> GatewayError | None:
        """Client body → agent. A client failure aborts the exchange (a malformed body is answered 400); an
        agent that breaks the connection just ends the pump, and one that stops reading leaves it waiting
        until the answer is relayed (it may already be answering, e.g. 413)."""
        engine = self.engine
        while True:
            try:
                event = await self._event()
            except Abort as exc:
                scope.cancel()
                if isinstance(exc.__cause__, h1parse.Malformed):
                    return errorpages.bad_request(f"Malformed request body: {exc.__cause__}.")
                self.client.http.send_failed()
                return None
            try:
                if isinstance(event, h1parse.Data):
                    record.bytes_in += len(event.data)
                    await engine.upstream_send(upstream, event, body=True)
                else:
                    await engine.upstream_send(upstream, END, body=True)
                    return None
            except Abort:
                return None

    async def read_body(self, limit: int) -> bytes:
        data = bytearray()
        while True:
            try:
                event = await self._event()
            except Abort:
                raise errorpages.bad_request("The request body did not arrive whole.") from None
            if isinstance(event, h1parse.EndOfMessage):
                return bytes(data)
            data += event.data
            if len(data) > limit:
                raise errorpages.bad_request(f"The form is larger than {limit} bytes.", 413)

    async def _switch_protocols(self, upstream: UpstreamConnection, event: h1parse.InformationalResponse,
                                record: AccessRecord) -> None:
        """101 from the agent: answer the client likewise, then splice raw bytes until either side ends."""
        client = self.client
        record.status = 101
        headers = strip_hop_by_hop(list(event.headers), keep=[b"upgrade"]) + [(b"connection", b"upgrade")]
        await self._send(h1parse.InformationalResponse(101, headers, event.reason))
        early_up = client.http.trailing_data
        early_down = upstream.http.trailing_data
        try:
            if early_down:
                await client.stream.send_all(early_down)
            if early_up:
                await upstream.stream.send_all(early_up)
        except STREAM_ERRORS:
            return
        keepalive(upstream, QUIET_KEEPALIVE)
        bytes_up, bytes_down = await splice(client.stream, upstream.stream)
        record.bytes_in += len(early_up) + bytes_up
        record.bytes_out += len(early_down) + bytes_down

    # The client connection, its failures as Abort.

    async def _event(self):
        try:
            event = await self.client.next_event(self.client_timeout)
        except h1parse.Malformed as exc:
            raise Abort() from exc  # the pump answers it
        except STREAM_ERRORS:
            raise Abort() from None
        if not isinstance(event, (h1parse.Data, h1parse.EndOfMessage)):
            raise Abort()
        return event

    async def _send(self, event: object) -> None:
        self._queue(event)
        await self._flush()

    def _queue(self, event: object) -> None:
        try:
            self.client.queue(event)
        except h1parse.SendError:
            raise Abort() from None

    async def _flush(self) -> None:
        try:
            await self.client.flush(self.client_timeout)
        except STREAM_ERRORS:
            raise Abort() from None

    # What the gateway answers by itself.

    async def _respond(self, status: int, headers, body: bytes, record: AccessRecord) -> None:
        """A complete response from the gateway itself; the unread request body is drained if small."""
        record.status = status
        headers = list(headers) + [(b"content-length", str(len(body)).encode())]
        await self._send(h1parse.Response(status, headers))
        if body:
            await self._send(h1parse.Data(body))
        await self._send(END)
        await self._discard_request_body()

    async def _answer(self, error: GatewayError, request: h1parse.Request | None, record: AccessRecord) -> None:
        """The error page for `error`, in the form the request accepts; if the response already began,
        nothing can be said any more and the connection just closes."""
        client = self.client
        record.error = record.error or error.code
        if client.http.our_state is not h1parse.IDLE:
            client.http.send_failed()
            return
        accept = b", ".join(v for n, v in request.headers if n == b"accept") if request is not None else b""
        response, body = errorpages.response(error, accept)
        record.status = error.status
        try:
            await self._send(response)
            await self._send(h1parse.Data(body))
            await self._send(END)
            await self._discard_request_body()
        except Abort:
            client.http.send_failed()

    async def _redirect(self, host: str, target: bytes, record: AccessRecord) -> None:
        https_port = self.engine.settings.https_port
        port = "" if https_port == 443 else f":{https_port}"
        location = f"https://{host}{port}".encode() + target
        await self._respond(308, [(b"location", location), (b"content-type", b"text/plain")],
                            b"Redirecting to " + location + b"\n", record)

    async def _discard_request_body(self) -> None:
        """Read away a small unread request body so the connection can serve the next request."""
        client = self.client
        if client.http.client_is_waiting_for_100_continue:
            return  # it won't send the body now that it has its answer; the connection just closes
        read = 0
        with trio.move_on_after(1):
            while client.http.their_state is h1parse.BODY and read <= _DISCARD_LIMIT:
                event = await self._event()
                if isinstance(event, h1parse.Data):
                    read += len(event.data)


async def _linger(stream: trio.abc.Stream) -> None:
    """Read away what a rejected client is still sending before closing: closing with unread data
    makes the kernel reset the connection, and the client would lose the error response."""
    read = 0
    with trio.move_on_after(1):
        while read <= _DISCARD_LIMIT and (data := await stream.receive_some(CHUNK)):
            read += len(data)


def _declares_body(request: h1parse.Request) -> bool:
    for name, value in request.headers:
        if name == b"transfer-encoding" or (name == b"content-length" and value.strip() != b"0"):
            return True
    return False
