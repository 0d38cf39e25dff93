"""The exchange engine both fronts share: a request routed by Host to an agent and its answer relayed back.

A front (http1.py, http2.py) turns what its client sends into a Request (h1parse's; h11's from HTTP/2) and
hands it to `Engine.exchange` as a ClientSide: the engine picks the route, adds the forwarding headers, takes
an agent connection from the pool, sends the request under the exchange's timeout guard and asks the
front to pump the body and relay the response. Bodies stream both ways chunk by chunk, so memory per
exchange is bounded whatever the body size. What no agent can answer comes back as a GatewayError
(unknown host 404, agent unreachable 502, agent too slow 504, malformed request 400) for the front to
render in its own protocol.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol
from urllib.parse import urlsplit

import trio

from kakuremichi import h1parse
from kakuremichi.access.gate import LOGGED_IN, MAX_FORM, Forward, Gate
from kakuremichi.faults import Contained
from kakuremichi.gateway.backends import Backends, affinity_header, pinned_backend
from kakuremichi.gateway.certs.challenges import ChallengeStore
from kakuremichi.gateway.http import errorpages
from kakuremichi.gateway.http.accesslog import AccessRecord
from kakuremichi.gateway.http.connection import DEFAULT_MAX_HEADER_BYTES, STREAM_ERRORS
from kakuremichi.gateway.http.errorpages import GatewayError
from kakuremichi.gateway.http.forwarding import ForwardingPolicy, client_ip, forwarded_headers
from kakuremichi.gateway.http.origin import ClientOrigin
from kakuremichi.gateway.http.requeststats import RequestStats
from kakuremichi.gateway.http.timeouts import Guard, Watchdog, tick_for
from kakuremichi.gateway.http.upstream import DialFailed, DialTimeout, UpstreamConnection, UpstreamPool
from kakuremichi.gateway.routes import Route, RouteTable
from kakuremichi.httpheaders import connection_tokens, strip_hop_by_hop
from kakuremichi.logs import log
from kakuremichi.values import InvalidHost, request_host

logger = logging.getLogger("kakuremichi.gateway.proxy")


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
END = h1parse.END  # one serves every message (trailers are not relayed)


class Stale(Exception):
    """A pooled upstream connection turned out dead before answering; the request may be replayed."""


class _Unreached(Exception):
    """No connection to the agent could be made: nothing was sent, so any request may go to another backend."""

    def __init__(self, error: GatewayError) -> None:
        super().__init__(error)
        self.error = error


class ClientSide(Protocol):
    """The client's half of one exchange, what a front implements: an HTTP/1.1 connection (http1.py), or
    one HTTP/2 stream (http2.py)."""

    origin: ClientOrigin  # the client connection, which a route sending PROXY headers keys its upstreams by

    async def relay_response(self, upstream: UpstreamConnection, host: str, replayable: bool,
                             record: AccessRecord, hsts: bool) -> None:
        """The agent's response to the client (with HSTS when `hsts`); errors before it starts raise
        GatewayError (or Stale)."""

    async def pump_request_body(self, upstream: UpstreamConnection, record: AccessRecord,
                                scope: trio.CancelScope) -> GatewayError | None:
        """The client's request body to the agent; a client failure cancels `scope`, and a malformed body
        is also returned as the error to answer (if the response has not begun)."""

    async def read_body(self, limit: int) -> bytes:
        """The whole (small) request body, for the gateway itself (a login form); GatewayError beyond `limit`."""


class Engine:
    """What every client connection shares, and the exchange with the agent that both fronts run:
    routes, upstream pool, challenges, settings, the timeout watchdog."""

    def __init__(self, routes: RouteTable, pool: UpstreamPool, settings: ProxySettings | None = None,
                 challenges: ChallengeStore | None = None, backends: Backends | None = None) -> None:
        self.routes = routes
        self.pool = pool
        self.backends = backends or Backends()
        self.settings = settings or ProxySettings()
        self.challenges = challenges
        self.watchdog = Watchdog(tick_for(self.settings.client_timeout, self.settings.upstream_timeout))
        self.faults = Contained(logger, "gateway connection")  # what escaped serving one
        self.requests = RequestStats()  # per tunnel, for the metrics
        self.gate = Gate()  # the access checks of protected tunnels (kakuremichi.access)
        self.on_login: Callable[[str, str], None] | None = None  # (tunnel id, client address) of each login

    def begin(self, record: AccessRecord, request: h1parse.Request, peer_ip: str) -> None:
        """Start `record` for `request`: its clock starts now, not with the keep-alive wait before it."""
        record.started = trio.current_time()
        record.method = request.method.decode("ascii", "replace")
        record.set_target(request.target)
        record.client = client_ip(peer_ip, request.headers, self.settings.forwarding)

    def finish(self, record: AccessRecord) -> None:
        """`record`'s request is over: count it for its tunnel's metrics and write its access line."""
        self.requests.count(record.tunnel, record.status, record.bytes_in, record.bytes_out,
                            trio.current_time() - record.started)
        record.emit()

    def resolve(self, request: h1parse.Request, record: AccessRecord) -> tuple[str, str, bytes]:
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

    def upstream_request(self, request: h1parse.Request, raw_host: str, host: str, target: bytes, scheme: str,
                         peer_ip: str) -> h1parse.Request:
        """The request as the agent gets it: hop-by-hop fields dropped, forwarding fields added."""
        forward_host = raw_host if raw_host.isascii() else host
        return h1parse.Request(request.method, target,
                           self._upstream_headers(request, forward_host, scheme, peer_ip))

    async def admit(self, side: ClientSide, request: h1parse.Request, route: Route, host: str, scheme: str,
                    record: AccessRecord) -> h1parse.Request:
        """`request` as the route's access policy lets it through to the agent (identity headers set from the
        session, never from the client), or the gate's own answer raised as a GatewayError: the agent then
        receives nothing."""
        policy, target = route.access, request.target
        body = await side.read_body(MAX_FORM) if self.gate.wants_body(policy, request.method, target) else b""
        if policy is None:
            authority = host
        else:  # with its port: an SSO login comes back to the very address the visitor used
            authority = next((v.decode("latin-1") for n, v in request.headers if n == b"host"), host)
        outcome = self.gate.check(policy, method=request.method, target=target, headers=request.headers,
                                  client_ip=record.client, host=authority, scheme=scheme, body=body)
        if isinstance(outcome, Forward):
            if outcome.headers is request.headers:
                return request
            return h1parse.Request(request.method, target, outcome.headers)
        if outcome.status >= 400:
            record.error = outcome.code  # why it was refused (never the secret tried)
        elif outcome.code in LOGGED_IN and self.on_login is not None:
            self.on_login(policy.tunnel_id, record.client)
        raise errorpages.access_answer(outcome)

    @staticmethod
    def interrupted(guard: Guard, record: AccessRecord) -> GatewayError:
        """Why an exchange's guard was cancelled, when not by the client's own timeout (each front handles
        that): the route was withdrawn, or the agent overstayed a wait."""
        if guard.expired is None:
            record.error = "route_withdrawn"
            return errorpages.unknown_host(record.host)
        return errorpages.upstream_timeout(record.host)

    def _upstream_headers(self, request: h1parse.Request, host: str, scheme: str, peer_ip: str):
        keep = []
        if any(n == b"transfer-encoding" for n, _ in request.headers):
            keep.append(b"transfer-encoding")  # only chunked was accepted; the agent must see the framing
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

    async def exchange(self, side: ClientSide, request: h1parse.Request, has_body: bool, route: Route, host: str,
                       record: AccessRecord, guard: Guard) -> None:
        """Send the request to the route's agent, or to one of its backends (kakuremichi.gateway.backends), and
        relay the answer to `side`. A request whose backend could not be reached, or (body-less and idempotent)
        failed before any response byte, is tried once more on another backend."""
        record.tunnel = (route.tunnel_id or "", route.domain)
        if not route.backends:
            try:
                await self._exchange_with(side, request, has_body, route, host, record, guard)
            except _Unreached as exc:
                raise exc.error from None
            return
        tried: list[str] = []
        pinned = pinned_backend(request.headers) if route.affinity else None
        while True:
            backend = self.backends.choose(route, pinned, tried)
            if backend is None:
                if any(b.agent_stopped for b in route.backends) and all(
                        b.agent_stopped or not b.enabled for b in route.backends):
                    raise errorpages.agent_offline(host)
                raise errorpages.no_backend(host)
            tried.append(backend.id)
            self.backends.active[backend.id] += 1
            try:
                with trio.CancelScope() as silenced, self.backends.waiting(backend.route.address, silenced, record), \
                        self.routes.hold(backend.route, guard.scope):
                    await self._exchange_with(side, request, has_body, backend.route, host, record, guard,
                                              pin=backend.id if route.affinity and backend.id != pinned else None)
                if not silenced.cancelled_caught:
                    return
                log(logger, logging.WARNING, "backend's agent went silent before answering", host=host,
                    backend=backend.id)
                failure = errorpages.agent_unreachable(host)
                if has_body or request.method in _NOT_IDEMPOTENT:
                    raise failure
            except _Unreached as exc:
                failure = exc.error
            except GatewayError as exc:
                if exc.code != "agent_unreachable" or has_body or request.method in _NOT_IDEMPOTENT:
                    raise
                failure = exc
            finally:
                self.backends.finished(backend)
            if len(tried) > 1:
                raise failure
            log(logger, logging.WARNING, "backend failed, trying another", host=host, backend=backend.id,
                error=failure.code)

    async def _exchange_with(self, side: ClientSide, request: h1parse.Request, has_body: bool, route: Route,
                             host: str, record: AccessRecord, guard: Guard, pin: str | None = None) -> None:
        """The exchange with one agent address (its waits under `guard`); a pooled connection found dead before
        answering a body-less idempotent request is replaced once by a fresh one (RFC 9110 §9.2.2: a POST or
        PATCH may have taken effect, so it is never repeated). `pin`: the backend id the response's affinity
        cookie is to name."""
        if route.agent_stopped:
            raise errorpages.agent_offline(host)
        replayable = not has_body and request.method not in _NOT_IDEMPOTENT
        hsts = route.force_https and record.scheme == "https"
        record.upstream = f"{route.address}:{route.port}"
        for attempt in (0, 1):
            upstream = await self._acquire(route, host, side.origin, fresh=attempt > 0)
            upstream.extra_headers = [affinity_header(pin, record.scheme == "https")] if pin else []
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

    async def _acquire(self, route: Route, host: str, origin: ClientOrigin, *, fresh: bool) -> UpstreamConnection:
        try:
            return await self.pool.acquire(route, fresh=fresh, origin=origin)
        except DialTimeout as exc:
            log(logger, logging.WARNING, "agent connect timed out", host=host, error=str(exc))
            raise _Unreached(errorpages.upstream_timeout(host)) from None
        except DialFailed as exc:
            log(logger, logging.WARNING, "agent unreachable", host=host, error=str(exc))
            raise _Unreached(errorpages.agent_unreachable(host)) from None

    async def _relay(self, side: ClientSide, upstream: UpstreamConnection, request: h1parse.Request,
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

    async def response_event(self, upstream: UpstreamConnection, host: str, replayable: bool) -> object:
        """The agent's next event up to its response head, within the upstream timeout; a pooled connection
        that dies before saying anything raises Stale if the request may be replayed, any other failure
        is the agent unreachable."""
        try:
            event = await upstream.next_event(self.settings.upstream_timeout)
            if upstream.extra_headers and type(event) is h1parse.Response:
                event.headers = [*event.headers, *upstream.extra_headers]
            return event
        except (h1parse.Malformed, *STREAM_ERRORS) as exc:
            if upstream.reused and upstream.bytes_received == 0 and replayable:
                raise Stale() from None
            log(logger, logging.WARNING, "agent answered badly", host=host, error=str(exc))
            raise errorpages.agent_unreachable(host) from None

    async def upstream_send(self, upstream: UpstreamConnection, event: object, *, body: bool = False) -> None:
        """`event` to the agent, within the upstream timeout unless it is request `body`: an agent may answer
        without reading the body, and the exchange's other task waits for that answer under the timeouts
        (the agent's pieces, the client's reads) and ends the pump when done. An agent that took more of
        the body is not slow to answer: the wait for its answer starts over."""
        try:
            await upstream.send(event, math.inf if body else self.settings.upstream_timeout)
        except (h1parse.SendError, *STREAM_ERRORS):
            raise Abort() from None
        if body:
            upstream.restart_read(self.settings.upstream_timeout)


def _host_and_target(request: h1parse.Request) -> tuple[str, bytes]:
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
