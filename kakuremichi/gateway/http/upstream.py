"""Connections to agents: dialled through an injected `dial`, kept alive in a small pool per upstream.

`dial(route)` is the only thing the proxy knows about the tunnel: it returns a connected
trio.abc.Stream to the route's agent (the daemon passes the netstack's TCP connect, tests pass
trio.open_tcp_stream) and raises OSError / trio.BrokenResourceError when the agent can't be reached.

A tunnel connect costs a WireGuard round trip and a TCP handshake, so idle connections are kept for
the next request. While idle, each is watched: if the agent closes it (or sends anything unasked),
it leaves the pool at once instead of failing the next request. Under load a connection is back in use
within milliseconds, and a watcher task per request (started, then cancelled) cost the gateway 6 % of
its time; so a connection is watched only once it has been idle for WATCH_AFTER. A close in that first
moment is still caught: a body-less request that finds its pooled connection dead is replayed on a new
one (see the proxy).

A route with a PROXY protocol version (an http tunnel with proxyProtocol) keys its connections by client
connection as well (kakuremichi.gateway.http.origin): each begins with the header naming that client.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import trio

from kakuremichi.gateway.http.connection import DEFAULT_MAX_HEADER_BYTES, STREAM_ERRORS, HttpConnection
from kakuremichi.gateway.http.origin import ClientOrigin
from kakuremichi.gateway.routes import Route
from kakuremichi.protocol import EXIT_KEEPALIVE

# A read from a tunnel stream (the netstack's) copies only what has arrived, so a larger cap costs nothing
# and relays a bulk response in a quarter of the wake-ups and writes to the client.
UPSTREAM_CHUNK = 1 << 18

Dial = Callable[[Route], Awaitable[trio.abc.Stream]]

WATCH_AFTER = 1.0  # seconds of idleness before a pooled connection gets its watcher
# During an exchange, a connection to an agent that stops answering (the agent killed, its machine gone) is
# probed after 2 s of silence and reset after 3 unanswered probes, 8 s in all, whichever way the data was
# flowing: the client's exchange ends then (its connection closed, its HTTP/2 stream reset) instead of after
# the upstream timeout. A live agent's netstack answers a probe at once, however slow the service behind it.
EXCHANGE_KEEPALIVE = (2.0, 2.0, 3)  # idle, interval (seconds), probes
# Idle in the pool (retired after its idle timeout, before any probe) or spliced after an Upgrade (a WebSocket
# may be quiet for hours): probed as rarely as the exit's connections, not every 2 s each. A pooled connection
# is switched to it only when it gets its watcher, WATCH_AFTER into its idleness (before the exchange setting
# would probe): one back in use within that second never changes setting (two netstack wake-ups a request).
QUIET_KEEPALIVE = EXIT_KEEPALIVE


def keepalive(conn: HttpConnection, setting: tuple[float, float, int]) -> None:
    """Probe the agent at `setting`'s pace, where the stream can (the netstack's; plain sockets in tests not)."""
    set_keepalive = getattr(conn.stream, "set_keepalive", None)
    if set_keepalive is not None:
        set_keepalive(*setting)


class DialFailed(Exception):
    """The agent could not be reached (refused, unroutable, tunnel down)."""


class DialTimeout(Exception):
    """The agent did not accept the connection within the connect timeout."""


@dataclass
class PoolLimits:
    connect_timeout: float = 10.0
    idle_timeout: float = 30.0  # drop idle connections before the agent's server would
    max_idle_per_upstream: int = 128  # below the client concurrency, requests keep opening tunnel connections
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES


class UpstreamConnection(HttpConnection):
    """An HTTP/1.1 client connection to one agent endpoint; `reused` is true when it came from the pool."""

    chunk = UPSTREAM_CHUNK

    def __init__(self, stream: trio.abc.Stream, key: Hashable, max_header_bytes: int,
                 origin: ClientOrigin | None = None) -> None:
        super().__init__(stream, server=False, max_header_bytes=max_header_bytes)
        self.key = key
        self.origin = origin  # the only client connection it may serve (its PROXY header names it), if any
        self.reused = False
        self.retired = False  # closed by the idle watcher (agent closed it, sent junk, or idle too long)
        self.quiet = False  # probed at QUIET_KEEPALIVE (idle a while), else at EXCHANGE_KEEPALIVE (as dialled)
        self.idle_since: float | None = None  # when it went back to the pool; None while in use
        self.extra_headers: list[tuple[bytes, bytes]] = []  # added to the current exchange's response head
        self._watch: trio.CancelScope | None = None
        self._watch_done = trio.Event()


class UpstreamPool:
    """Dials agents and keeps idle keep-alive connections; made by `open_upstream_pool`."""

    def __init__(self, dial: Dial, nursery: trio.Nursery, limits: PoolLimits) -> None:
        self._dial = dial
        self._nursery = nursery
        self.limits = limits
        self._idle: dict[Hashable, list[UpstreamConnection]] = {}
        self._closed = False
        self._unwatched: deque[tuple[float, UpstreamConnection]] = deque()  # releases, oldest first
        self._released = trio.Event()

    def idle_count(self, key: Hashable) -> int:
        return len(self._idle.get(key, ()))

    @staticmethod
    def key(route: Route, origin: ClientOrigin | None) -> Hashable:
        """What `route`'s connections are pooled under: its upstream, and for a route sending a PROXY header
        the client connection it names (and the version, so a changed one never reuses the old headers)."""
        return (route.upstream, route.proxy_protocol, origin) if route.proxy_protocol else route.upstream

    async def acquire(self, route: Route, *, fresh: bool = False,
                      origin: ClientOrigin | None = None) -> UpstreamConnection:
        """A connection to `route.upstream`: an idle pooled one unless `fresh`, else a new dial (beginning with
        the PROXY header naming `origin`, the client connection, when the route sends one)."""
        if not route.proxy_protocol:
            origin = None
        key = self.key(route, origin)
        idle = self._idle.get(key)
        while idle and not fresh:
            conn = idle.pop()
            if not idle:
                del self._idle[key]
            since, conn.idle_since = conn.idle_since, None
            watch, conn._watch = conn._watch, None
            if watch is not None:
                watch.cancel()
                # The watcher may still be inside receive_some: hand the stream over only once it has
                # left, and only if it left because we picked the connection up (not because the agent
                # closed it). Shielded: cancelled here, the connection would be neither pooled nor held
                # by anyone, and never closed (the watcher leaves at once, being cancelled).
                with trio.CancelScope(shield=True):
                    await conn._watch_done.wait()
            if not conn.retired and self._fit(conn, since):
                conn.reused = True
                if conn.quiet:
                    keepalive(conn, EXCHANGE_KEEPALIVE)
                    conn.quiet = False
                return conn
            if not conn.retired:
                await conn.aclose()
            idle = self._idle.get(key)
        stream = None
        try:
            with trio.fail_after(self.limits.connect_timeout):
                stream = await self._dial(route)
                if origin is not None:
                    await stream.send_all(origin.header(route.proxy_protocol))
        except trio.TooSlowError:
            await _close(stream)
            raise DialTimeout(f"connect to {route.address}:{route.port} timed out") from None
        except STREAM_ERRORS as exc:
            await _close(stream)
            raise DialFailed(f"connect to {route.address}:{route.port} failed: {exc}") from exc
        except BaseException:  # cancelled while sending the header: the dialled stream is nobody's
            await _close(stream)
            raise
        return UpstreamConnection(stream, key, self.limits.max_header_bytes, origin)

    async def release(self, conn: UpstreamConnection) -> None:
        """Return a connection after an exchange: pooled when it can carry another request, else closed. One
        whose agent sent more than its answer is closed too: no request asked for those bytes, and they must
        not be taken for the answer to the next one."""
        if (self._closed or not conn.reusable or conn.http.buffered
                or (conn.origin is not None and conn.origin.closed)
                or self.idle_count(conn.key) >= self.limits.max_idle_per_upstream):
            await conn.aclose()
            return
        if conn.origin is not None:
            conn.origin.keys.add(conn.key)
        conn.start_next_cycle()
        conn.idle_since = since = trio.current_time()
        self._idle.setdefault(conn.key, []).append(conn)
        self._unwatched.append((since, conn))
        self._released.set()

    async def _start_watchers(self) -> None:
        """Give each connection still idle WATCH_AFTER after its release a watcher; runs as long as the pool.
        Releases queue up in time order, so each is looked at once; one picked up since has moved on."""
        queue = self._unwatched
        while True:
            if not queue:
                self._released = trio.Event()
                await self._released.wait()
                continue
            since, conn = queue[0]
            if conn.idle_since == since and trio.current_time() < since + WATCH_AFTER:
                await trio.sleep_until(since + WATCH_AFTER)
                continue
            queue.popleft()
            if conn.idle_since == since and conn._watch is None:
                keepalive(conn, QUIET_KEEPALIVE)
                conn.quiet = True
                conn._watch = trio.CancelScope(deadline=since + self.limits.idle_timeout)
                conn._watch_done = trio.Event()
                self._nursery.start_soon(self._watch_idle, conn, conn._watch)

    def _fit(self, conn: UpstreamConnection, since: float) -> bool:
        """Not idle too long, and, for a stream that can tell at once (the netstack's), nothing from the
        agent since: an unwatched connection the agent closed is never handed out. A stream that cannot
        tell (a plain socket) counts as fit; a body-less idempotent request on it is replayed if needed."""
        if trio.current_time() - since > self.limits.idle_timeout:
            return False
        return getattr(conn.stream, "quiet_and_open", True)

    def _take(self, conn: UpstreamConnection) -> UpstreamConnection:
        idle = self._idle.get(conn.key, [])
        if conn in idle:
            idle.remove(conn)
        if not idle:
            self._idle.pop(conn.key, None)
        conn.idle_since = None
        return conn

    async def _watch_idle(self, conn: UpstreamConnection, scope: trio.CancelScope) -> None:
        """Wait on an idle connection; anything but being picked up (EOF, data, timeout) retires it."""
        try:
            with scope:
                try:
                    await conn.stream.receive_some(1)
                except STREAM_ERRORS:
                    pass
            if scope.cancelled_caught and conn._watch is not scope:
                return  # picked up by acquire(): in use now
            conn.retired = True
            with trio.CancelScope(shield=True):
                await self._take(conn).aclose()
        finally:
            conn._watch_done.set()

    async def retire(self, origin: ClientOrigin) -> None:
        """`origin`'s client connection has ended: close the idle connections that only it could use."""
        origin.closed = True
        with trio.CancelScope(shield=True):  # the client's task may be cancelled: these are closed all the same
            for key in origin.keys:
                for conn in self._idle.pop(key, ()):
                    conn.idle_since = None
                    watch, conn._watch = conn._watch, None
                    if watch is not None:  # taken from its watcher as acquire() takes it
                        watch.cancel()
                        await conn._watch_done.wait()
                    if not conn.retired:
                        await conn.aclose()
        origin.keys.clear()

    async def _close_idle(self) -> None:
        self._closed = True
        for conns in list(self._idle.values()):
            for conn in conns:
                await conn.aclose()
        self._idle.clear()


async def _close(stream: trio.abc.Stream | None) -> None:
    if stream is not None:
        await trio.aclose_forcefully(stream)


@asynccontextmanager
async def open_upstream_pool(dial: Dial, limits: PoolLimits | None = None) -> AsyncIterator[UpstreamPool]:
    """A pool whose idle-connection watchers live as long as the `async with` block."""
    async with trio.open_nursery() as nursery:
        pool = UpstreamPool(dial, nursery, limits or PoolLimits())
        nursery.start_soon(pool._start_watchers)
        try:
            yield pool
        finally:
            nursery.cancel_scope.cancel()
            with trio.CancelScope(shield=True):
                await pool._close_idle()
