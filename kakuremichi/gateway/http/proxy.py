"""The HTTP/1.1 reverse proxy: one client connection in, requests routed by Host to agents.

Bodies stream both ways chunk by chunk (request body pumped to the agent while its response is
relayed back), so memory per exchange is bounded whatever the body size. An Upgrade answered with
101 turns the exchange into a plain byte pipe (WebSocket). The gateway answers by itself only what no
agent can: unknown host (404), agent unreachable (502), agent too slow (504), malformed request (400),
ACME challenges and HTTPS redirects.
"""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Protocol
from urllib.parse import urlsplit

import h11
import trio

from kakuremichi.faults import Contained
from kakuremichi.gateway.http import errorpages
from kakuremichi.gateway.http.accesslog import AccessRecord
from kakuremichi.gateway.certs.challenges import ChallengeStore
from kakuremichi.gateway.http.connection import CHUNK, DEFAULT_MAX_HEADER_BYTES, STREAM_ERRORS, HttpConnection
from kakuremichi.gateway.http.errorpages import GatewayError
from kakuremichi.gateway.http.forwarding import ForwardingPolicy, client_ip, forwarded_headers, response_headers
from kakuremichi.gateway.routes import Route, RouteTable, TlsMode
from kakuremichi.gateway.http.timeouts import Guard, Watchdog, tick_for
from kakuremichi.gateway.http.upstream import (
    Dial,
    DialFailed,
    DialTimeout,
    PoolLimits,
    UpstreamConnection,
    QUIET_KEEPALIVE,
    UpstreamPool,
    keepalive,
    open_upstream_pool,
)
from kakuremichi.httpheaders import connection_tokens, strip_hop_by_hop
from kakuremichi.logs import log
from kakuremichi.pipe import splice
from kakuremichi.values import InvalidHost, request_host

logger = logging.getLogger("kakuremichi.gateway.proxy")
_DISCARD_LIMIT = 1 << 20  # request body bytes read away after answering early, to keep the connection


@dataclass
class ProxySettings:
    """Limits and policies of the public listeners."""

    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES
    client_timeout: float = 60.0  # longest silence from a client, between requests or mid-body
    upstream_timeout: float = 60.0  # longest wait for the agent's response head, or between body chunks
    https_port: int = 443  # where force_https redirects point
    forwarding: ForwardingPolicy = field(default_factory=ForwardingPolicy)


class Abort(Exception):
    """The exchange broke after the response started: nothing more can be said, close the connection
    (HTTP/2: reset the stream)."""


_NOT_IDEMPOTENT = (b"POST", b"PATCH", b"CONNECT")
END = h11.EndOfMessage()  # events are immutable: one serves every message (trailers are not relayed)


class Stale(Exception):
    """A pooled upstream connection turned out dead before answering; the request may be replayed."""


class ClientSide(Protocol):
    """The client's half of one exchange: an HTTP/1.1 connection, or one HTTP/2 stream (http2.py)."""

    async def relay_response(self, upstream: UpstreamConnection, host: str, replayable: bool,
                             record: AccessRecord, hsts: bool) -> None:
        """The agent's response to the client (with HSTS when `hsts`); errors before it starts raise
        GatewayError (or Stale)."""

    async def pump_request_body(self, upstream: UpstreamConnection, record: AccessRecord,
                                scope: trio.CancelScope) -> GatewayError | None:
        """The client's request body to the agent; a client failure cancels `scope`, and a malformed body
        is also returned as the error to answer (if the response has not begun)."""


class _Http1Side:
    """An HTTP/1.1 client connection as a ClientSide."""

    __slots__ = ("proxy", "client")

    def __init__(self, proxy: Proxy, client: HttpConnection) -> None:
        self.proxy, self.client = proxy, client

    def relay_response(self, upstream: UpstreamConnection, host: str, replayable: bool, record: AccessRecord,
                       hsts: bool):
        return self.proxy._relay_response(self.client, upstream, host, replayable, record, hsts)

    def pump_request_body(self, upstream: UpstreamConnection, record: AccessRecord, scope: trio.CancelScope):
        return self.proxy._pump_request_body(self.client, upstream, record, scope)


class Proxy:
    """Shared state of all client connections: routes, upstream pool, challenges, settings."""

    def __init__(self, routes: RouteTable, pool: UpstreamPool, settings: ProxySettings | None = None,
                 challenges: ChallengeStore | None = None) -> None:
        self.routes = routes
        self.pool = pool
        self.settings = settings or ProxySettings()
        self.challenges = challenges
        self.watchdog = Watchdog(tick_for(self.settings.client_timeout, self.settings.upstream_timeout))
        self.faults = Contained(logger, "gateway connection")  # what escaped serving one

    async def serve(self, stream: trio.abc.Stream, *, scheme: str, peer_ip: str) -> None:
        """Serve one client connection (already TLS-unwrapped for https) until it closes or idles out.

        Each request cycle runs under one guard: the client's and the agent's waits time out through it,
        and a config change withdrawing the route cancels it. A gateway error found on the way is answered
        after the guard closes, so even a timed-out exchange can still tell the client why."""
        client = HttpConnection(stream, h11.SERVER, self.settings.max_header_bytes)
        side = _Http1Side(self, client)
        try:
            while True:
                record = AccessRecord(client=peer_ip, scheme=scheme)
                request = error = None
                guard = self.watchdog.guard(client)
                with guard:
                    try:
                        request = await client.next_event(self.settings.client_timeout)
                    except h11.RemoteProtocolError as exc:
                        if client.h11.our_state is not h11.IDLE:
                            return
                        record.error = "bad_request"
                        error = errorpages.bad_request(f"Malformed request: {exc}.", exc.error_status_hint)
                    else:
                        if not isinstance(request, h11.Request):
                            return  # ConnectionClosed: the client is done
                        error = await self._handle(side, request, scheme, peer_ip, record, guard)
                if guard.scope.cancelled_caught:
                    if request is None:
                        return  # idle past the client timeout
                    error = self._interrupted(client, guard, record)
                if error is not None:
                    with self.watchdog.guard(client):
                        await self._answer(client, error, request, record)
                record.emit()
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
            await client.aclose()

    async def _handle(self, side: _Http1Side, request: h11.Request, scheme: str, peer_ip: str,
                      record: AccessRecord, guard: Guard) -> GatewayError | None:
        """Route and relay one request; an error the gateway must answer is returned, not sent."""
        client = side.client
        self.begin(record, request, peer_ip)
        try:
            raw_host, host, target = self.resolve(request, record)
            if scheme == "http" and self.challenges is not None:
                answer = self.challenges.answer(target, host)
                if answer is not None:
                    await self._respond(client, 200, [(b"content-type", b"text/plain")], answer, record)
                    return None
            route = self.route_for(host)
            if scheme == "http" and route.force_https and route.tls is not TlsMode.OFF:
                await self._redirect(client, host, target, record)
                return None
            upstream_request = self.upstream_request(request, raw_host, host, target, scheme, peer_ip)
            has_body = _declares_body(upstream_request)
            if not has_body:
                await self._client_event(client)  # the EndOfMessage h11 has ready for body-less requests
            with self.routes.hold(route, guard.scope):
                await self.exchange(side, upstream_request, has_body, route, host, record, guard)
        except GatewayError as error:
            return error
        except Abort:
            client.h11.send_failed()
        return None

    def begin(self, record: AccessRecord, request: h11.Request, peer_ip: str) -> None:
        """Start `record` for `request`: its clock starts now, not with the keep-alive wait before it."""
        record.started = trio.current_time()
        record.method = request.method.decode("ascii", "replace")
        record.set_target(request.target)
        record.client = client_ip(peer_ip, request.headers, self.settings.forwarding)

    def resolve(self, request: h11.Request, record: AccessRecord) -> tuple[str, str, bytes]:
        """Host as sent, normalised host and origin-form target; a request the gateway refuses raises."""
        if sum(len(n) + len(v) + 4 for n, v in request.headers) > self.settings.max_header_bytes:
            raise errorpages.bad_request("Request headers are too large.", 431)
        raw_host, target = _host_and_target(request)
        try:
            host = request_host(raw_host)
        except InvalidHost as exc:
            raise errorpages.bad_request(f"Invalid Host header: {exc}.") from None
        record.host = host
        if request.method == b"CONNECT":
            raise errorpages.method_not_allowed("CONNECT")
        return raw_host, host, target

    def route_for(self, host: str) -> Route:
        route = self.routes.lookup(host)
        if route is None:
            raise errorpages.unknown_host(host)
        return route

    def upstream_request(self, request: h11.Request, raw_host: str, host: str, target: bytes, scheme: str,
                         peer_ip: str) -> h11.Request:
        """The request as the agent gets it: hop-by-hop fields dropped, forwarding fields added."""
        forward_host = raw_host if raw_host.isascii() else host
        return h11.Request(method=request.method, target=target,
                           headers=self._upstream_headers(request, forward_host, scheme, peer_ip))

    @staticmethod
    def _interrupted(client: HttpConnection, guard: Guard, record: AccessRecord) -> GatewayError | None:
        """Why a request's guard was cancelled, as the error to answer (None: the client just goes)."""
        if guard.expired is client:
            record.error = "client_timeout"
            client.h11.send_failed()
            return None
        if guard.expired is None:
            record.error = "route_withdrawn"
            return errorpages.unknown_host(record.host)
        return errorpages.upstream_timeout(record.host)

    def _upstream_headers(self, request: h11.Request, host: str, scheme: str, peer_ip: str):
        keep = []
        if any(n == b"transfer-encoding" for n, _ in request.headers):
            keep.append(b"transfer-encoding")  # h11 only accepted chunked; the agent must see the framing
        upgrade = b"upgrade" in connection_tokens(request.headers)
        if upgrade:
            keep.append(b"upgrade")
        headers = strip_hop_by_hop(list(request.headers), keep=keep)
        if upgrade:
            headers.append((b"connection", b"upgrade"))
        if not any(n == b"host" for n, _ in headers):
            headers.insert(0, (b"host", host.encode()))
        return forwarded_headers(headers, peer_ip=peer_ip, host=host, scheme=scheme,
                                 policy=self.settings.forwarding)

    async def exchange(self, side: ClientSide, request: h11.Request, has_body: bool, route: Route, host: str,
                       record: AccessRecord, guard: Guard) -> None:
        """Send the request to the route's agent (its waits under `guard`) and relay its answer to `side`; a
        pooled connection found dead before answering a body-less idempotent request is replaced once by a
        fresh one (RFC 9110 §9.2.2: a POST or PATCH may have taken effect, so it is never repeated)."""
        if route.agent_stopped:
            raise errorpages.agent_offline(host)
        replayable = not has_body and request.method not in _NOT_IDEMPOTENT
        hsts = route.force_https and record.scheme == "https"
        record.upstream = f"{route.address}:{route.port}"
        for attempt in (0, 1):
            upstream = await self._acquire(route, host, fresh=attempt > 0)
            guard.waiters.append(upstream)
            record.reused = upstream.reused
            try:
                await self._relay(side, upstream, request, has_body, replayable, host, record, hsts)
                return
            except Stale:
                pass
            finally:
                await self.pool.release(upstream)
        raise errorpages.agent_unreachable(host)

    async def _acquire(self, route: Route, host: str, *, fresh: bool) -> UpstreamConnection:
        try:
            return await self.pool.acquire(route, fresh=fresh)
        except DialTimeout as exc:
            log(logger, logging.WARNING, "agent connect timed out", host=host, error=str(exc))
            raise errorpages.upstream_timeout(host) from None
        except DialFailed as exc:
            log(logger, logging.WARNING, "agent unreachable", host=host, error=str(exc))
            raise errorpages.agent_unreachable(host) from None

    async def _relay(self, side: ClientSide, upstream: UpstreamConnection, request: h11.Request,
                     has_body: bool, replayable: bool, host: str, record: AccessRecord, hsts: bool) -> None:
        failure: BaseException | None = None
        try:
            await self.upstream_send(upstream, request)
            if not has_body:
                await self.upstream_send(upstream, END)
        except Abort:
            raise (Stale() if upstream.reused and replayable else errorpages.agent_unreachable(host))
        if not has_body:
            await side.relay_response(upstream, host, replayable, record, hsts)
            return
        async def pump() -> None:
            nonlocal failure
            failure = await side.pump_request_body(upstream, record, nursery.cancel_scope)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(pump)
            try:
                await side.relay_response(upstream, host, False, record, hsts)
            except (GatewayError, Abort, Stale) as exc:
                failure = exc
            nursery.cancel_scope.cancel()  # an early answer leaves no use for the rest of the upload
        if failure is not None:
            raise failure

    async def _relay_response(self, client: HttpConnection, upstream: UpstreamConnection, host: str,
                              replayable: bool, record: AccessRecord, hsts: bool) -> None:
        while True:
            try:
                event = await upstream.next_event(self.settings.upstream_timeout)
            except (h11.RemoteProtocolError, *STREAM_ERRORS) as exc:
                if upstream.reused and upstream.bytes_received == 0 and replayable:
                    raise Stale() from None
                log(logger, logging.WARNING, "agent answered badly", host=host, error=str(exc))
                raise errorpages.agent_unreachable(host) from None
            if isinstance(event, h11.InformationalResponse) and event.status_code == 101:
                await self._switch_protocols(client, upstream, event, record)
                return
            if not isinstance(event, h11.InformationalResponse):
                break
            await self._client_send(client, event)  # 100 Continue, 103 Early Hints
        if not isinstance(event, h11.Response):
            raise errorpages.agent_unreachable(host)
        record.status = event.status_code
        self._client_queue(client, h11.Response(
            status_code=event.status_code, reason=event.reason,
            headers=response_headers(event.headers, hsts, keep=[b"content-length"])))
        while True:
            # Relay what already arrived in one write; wait for the agent only when nothing is left.
            try:
                event = upstream.buffered_event()
                if event is None:
                    await self._client_flush(client)
                    event = await upstream.next_event(self.settings.upstream_timeout)
            except (h11.RemoteProtocolError, *STREAM_ERRORS):
                raise Abort() from None  # mid-body: truncation must show, so the client connection dies
            if isinstance(event, h11.Data):
                record.bytes_out += len(event.data)
                self._client_queue(client, event)
            elif isinstance(event, h11.EndOfMessage):
                self._client_queue(client, END)
                await self._client_flush(client)
                return
            else:
                raise Abort()  # nothing else can come mid-body

    async def _pump_request_body(self, client: HttpConnection, upstream: UpstreamConnection,
                                 record: AccessRecord, scope: trio.CancelScope) -> GatewayError | None:
        """Client body → agent. A client failure aborts the exchange (a malformed body is answered 400); an
        agent that breaks the connection just ends the pump, and one that stops reading leaves it waiting
        until the answer is relayed (it may already be answering, e.g. 413)."""
        while True:
            try:
                event = await self._client_event(client)
            except Abort as exc:
                scope.cancel()
                if isinstance(exc.__cause__, h11.RemoteProtocolError):
                    return errorpages.bad_request(f"Malformed request body: {exc.__cause__}.")
                client.h11.send_failed()
                return None
            try:
                if isinstance(event, h11.Data):
                    record.bytes_in += len(event.data)
                    await self.upstream_send(upstream, event, body=True)
                else:
                    await self.upstream_send(upstream, END, body=True)
                    return None
            except Abort:
                return None

    async def _switch_protocols(self, client: HttpConnection, upstream: UpstreamConnection,
                                event: h11.InformationalResponse, record: AccessRecord) -> None:
        """101 from the agent: answer the client likewise, then splice raw bytes until either side ends."""
        record.status = 101
        headers = strip_hop_by_hop(list(event.headers), keep=[b"upgrade"]) + [(b"connection", b"upgrade")]
        await self._client_send(client, h11.InformationalResponse(
            status_code=101, reason=event.reason, headers=headers))
        early_up, _ = client.h11.trailing_data
        early_down, _ = upstream.h11.trailing_data
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

    async def _client_event(self, client: HttpConnection):
        try:
            event = await client.next_event(self.settings.client_timeout)
        except h11.RemoteProtocolError as exc:
            raise Abort() from exc  # the pump answers it
        except STREAM_ERRORS:
            raise Abort() from None
        if not isinstance(event, (h11.Data, h11.EndOfMessage)):
            raise Abort()
        return event

    async def _client_send(self, client: HttpConnection, event: h11.Event) -> None:
        self._client_queue(client, event)
        await self._client_flush(client)

    @staticmethod
    def _client_queue(client: HttpConnection, event: h11.Event) -> None:
        try:
            client.queue(event)
        except h11.LocalProtocolError:
            raise Abort() from None

    async def _client_flush(self, client: HttpConnection) -> None:
        try:
            await client.flush(self.settings.client_timeout)
        except STREAM_ERRORS:
            raise Abort() from None

    async def upstream_send(self, upstream: UpstreamConnection, event: h11.Event, *, body: bool = False) -> None:
        """`event` to the agent, within the upstream timeout unless it is request `body`: an agent may answer
        without reading the body, and the exchange's other task waits for that answer under the timeouts
        (the agent's pieces, the client's reads) and ends the pump when done. An agent that took more of
        the body is not slow to answer: the wait for its answer starts over."""
        try:
            await upstream.send(event, math.inf if body else self.settings.upstream_timeout)
        except (h11.LocalProtocolError, *STREAM_ERRORS):
            raise Abort() from None
        if body and upstream.read_deadline != math.inf:
            upstream.read_deadline = trio.current_time() + self.settings.upstream_timeout

    async def _respond(self, client: HttpConnection, status: int, headers, body: bytes,
                       record: AccessRecord) -> None:
        """A complete response from the gateway itself; the unread request body is drained if small."""
        record.status = status
        headers = list(headers) + [(b"content-length", str(len(body)).encode())]
        await self._client_send(client, h11.Response(status_code=status, headers=headers))
        if body:
            await self._client_send(client, h11.Data(data=body))
        await self._client_send(client, END)
        await self._discard_request_body(client)

    async def _answer(self, client: HttpConnection, error: GatewayError, request: h11.Request | None,
                      record: AccessRecord) -> None:
        """The error page for `error`, in the form the request accepts; if the response already began,
        nothing can be said any more and the connection just closes."""
        record.error = record.error or error.code
        if client.h11.our_state not in (h11.IDLE, h11.SEND_RESPONSE):  # IDLE: the request was malformed
            client.h11.send_failed()
            return
        accept = b", ".join(v for n, v in request.headers if n == b"accept") if request is not None else b""
        response, body = errorpages.response(error, accept)
        record.status = error.status
        try:
            await self._client_send(client, response)
            await self._client_send(client, h11.Data(data=body))
            await self._client_send(client, END)
            await self._discard_request_body(client)
        except Abort:
            client.h11.send_failed()

    async def _redirect(self, client: HttpConnection, host: str, target: bytes, record: AccessRecord) -> None:
        port = "" if self.settings.https_port == 443 else f":{self.settings.https_port}"
        location = f"https://{host}{port}".encode() + target
        await self._respond(client, 308, [(b"location", location), (b"content-type", b"text/plain")],
                            b"Redirecting to " + location + b"\n", record)

    async def _discard_request_body(self, client: HttpConnection) -> None:
        """Read away a small unread request body so the connection can serve the next request."""
        if client.h11.client_is_waiting_for_100_continue:
            return  # it won't send the body now that it has its answer; the connection just closes
        read = 0
        with trio.move_on_after(1):
            while client.h11.their_state is h11.SEND_BODY and read <= _DISCARD_LIMIT:
                event = await self._client_event(client)
                if isinstance(event, h11.Data):
                    read += len(event.data)


@asynccontextmanager
async def open_proxy(routes: RouteTable, dial: Dial, settings: ProxySettings | None = None,
                     limits: PoolLimits | None = None,
                     challenges: ChallengeStore | None = None) -> AsyncIterator[Proxy]:
    """A proxy whose upstream pool and timeout watchdog run for the `async with` block."""
    async with open_upstream_pool(dial, limits) as pool, trio.open_nursery() as nursery:
        proxy = Proxy(routes, pool, settings, challenges)
        nursery.start_soon(proxy.watchdog.run)
        yield proxy
        nursery.cancel_scope.cancel()


async def _linger(stream: trio.abc.Stream) -> None:
    """Read away what a rejected client is still sending before closing: closing with unread data
    makes the kernel reset the connection, and the client would lose the error response."""
    read = 0
    with trio.move_on_after(1):
        while read <= _DISCARD_LIMIT and (data := await stream.receive_some(CHUNK)):
            read += len(data)


def _declares_body(request: h11.Request) -> bool:
    for name, value in request.headers:
        if name == b"transfer-encoding" or (name == b"content-length" and value.strip() != b"0"):
            return True
    return False


def _host_and_target(request: h11.Request) -> tuple[str, bytes]:
    """Host and origin-form target; an absolute-form target's authority overrides Host (RFC 9112 §3.2.2)."""
    target = request.target
    if target[:7].lower() == b"http://" or target[:8].lower() == b"https://":
        parts = urlsplit(target.decode("latin-1"))
        origin = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        return parts.netloc.rpartition("@")[2], origin.encode("latin-1")
    hosts = [v for n, v in request.headers if n == b"host"]
    if len(hosts) != 1:
        raise errorpages.bad_request("Exactly one Host header is required.")
    if not target.startswith(b"/") and target != b"*":
        raise errorpages.bad_request("Unsupported request target.")
    return hosts[0].decode("latin-1"), target
