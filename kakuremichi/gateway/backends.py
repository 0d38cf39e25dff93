"""The gateway's choice among a route's backends (kakuremichi.balancing), with what it knows of their health
itself, and the exchanges each backend holds (what a draining backend still has to finish). HTTP routes and
tcp/udp tunnels (gateway/portbackends.py) share it.

With affinity, an HTTP client keeps its backend through a cookie (AFFINITY_COOKIE) while that backend is usable.
A backend is down when its agent reported its target unhealthy (through control), when its agent stopped,
or, without waiting for control, when its agent's WireGuard session is silent (`Liveness`): an agent that was
killed or whose machine vanished is out of the pool within LIVENESS_LIMIT, and back as soon as it answers.
"""

from __future__ import annotations

import dataclasses
import re
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from contextlib import contextmanager

import trio

from kakuremichi.access.policy import AccessPolicy
from kakuremichi.balancing import B, Balancer, usable
from kakuremichi.gateway.http.accesslog import AccessRecord
from kakuremichi.gateway.routes import Backend, Route
from kakuremichi.protocol import RouteBackend, RouteConfig

Reachable = Callable[[str], bool]  # agent address → whether its WireGuard session is alive

AFFINITY_COOKIE = b"kakuremichi-backend"  # an HTTP client's backend, on a tunnel with affinity
_BACKEND_ID = re.compile(rb"[A-Za-z0-9_-]{1,64}")
PING_INTERVAL = 0.5  # seconds between liveness pings of a quiet agent that serves a route with several backends
LIVENESS_LIMIT = 2.0  # seconds of silence (three pings unanswered) after which such an agent counts as gone


def always(_address: str) -> bool:
    return True


class Backends:
    """Picks each exchange's backend and counts the exchanges in flight per backend."""

    def __init__(self, reachable: Reachable = always) -> None:
        self.reachable = reachable
        self.active: Counter[str] = Counter()  # backend id → exchanges in flight
        self._balancers: dict[str, Balancer] = {}  # per domain
        self._waiting: dict[str, dict[trio.CancelScope, AccessRecord | None]] = {}  # address → exchanges not yet answered

    @contextmanager
    def waiting(self, address: str, scope: trio.CancelScope, record: AccessRecord | None) -> Iterator[None]:
        """While in the block, `scope` (an exchange with the agent at `address`) is cancelled if that agent goes
        silent before the response began (`record.status` still 0; no record: a tcp tunnel's dial): the request
        may then go elsewhere."""
        exchanges = self._waiting.setdefault(address, {})
        exchanges[scope] = record
        try:
            yield
        finally:
            del exchanges[scope]
            if not exchanges:
                del self._waiting[address]

    def went_down(self, address: str) -> None:
        """The agent at `address` went silent: its exchanges still waiting for a response are cancelled."""
        for scope, record in list(self._waiting.get(address, {}).items()):
            if record is None or record.status == 0:
                scope.cancel()

    def healthy(self, backend: Backend | RouteBackend) -> bool:
        return (backend.health != "unhealthy" and not backend.agent_stopped
                and self.reachable(backend.address))

    def choose(self, route: Route, pinned: str | None = None, exclude: Collection[str] = ()) -> Backend | None:
        """The backend for one exchange of `route` (None: none is usable): `pinned` (the id of the client's
        affinity cookie) while it is usable, else the balancer's pick."""
        if pinned is not None:
            for backend in usable(route.backends, self.healthy, exclude):
                if backend.id == pinned:
                    return backend
        return self.pick(route.domain, route.backends, exclude=exclude)

    def pick(self, name: str, backends: Sequence[B], key: bytes | None = None,
             exclude: Collection[str] = ()) -> B | None:
        """The balancer's pick among `backends` of the route `name` (a domain, or a tcp/udp tunnel's port)."""
        balancer = self._balancers.get(name)
        if balancer is None:
            balancer = self._balancers[name] = Balancer()
        return balancer.choose(backends, self.healthy, key=key, exclude=exclude)

    def forget_others(self, names: Collection[str]) -> None:
        """Drop the balancing state of routes no longer served."""
        self._balancers = {name: b for name, b in self._balancers.items() if name in names}

    def finished(self, backend: Backend) -> None:
        """One exchange of `backend` ended."""
        self.active[backend.id] -= 1
        if not self.active[backend.id]:
            del self.active[backend.id]

    def stats(self) -> dict[str, int]:
        return dict(self.active)


def route_of(config: RouteConfig, access: AccessPolicy | None = None) -> Route:
    """The gateway's Route for a route control pushed, with its backends (each with the Route of its address,
    under the same access policy)."""
    route = Route(config.domain, config.agent_ip, config.port, enabled=config.enabled, force_https=config.force_https,
                  tls=config.tls_mode, tunnel_id=config.tunnel_id, agent_stopped=config.agent_stopped, access=access,
                  proxy_protocol=config.proxy_protocol or None)
    if not config.backends:
        return route
    backends = tuple(Backend(b.id, dataclasses.replace(route, address=b.address, backend_id=b.id,
                                                       agent_stopped=b.agent_stopped),
                             b.weight, b.priority, b.enabled, b.draining, b.health, b.agent_stopped)
                     for b in config.backends)
    return dataclasses.replace(route, backends=backends, affinity=config.affinity is True)


def pinned_backend(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """The backend id the client's affinity cookie names, if it sent one."""
    for name, value in headers:
        if name == b"cookie":
            for pair in value.split(b";"):
                key, _, chosen = pair.strip().partition(b"=")
                if key == AFFINITY_COOKIE and _BACKEND_ID.fullmatch(chosen):
                    return chosen.decode()
    return None


def affinity_header(backend_id: str, secure: bool) -> tuple[bytes, bytes]:
    """The Set-Cookie that keeps the client on `backend_id` (for the browser session)."""
    return (b"set-cookie", AFFINITY_COOKIE + b"=" + backend_id.encode() + b"; Path=/; HttpOnly; SameSite=Lax"
            + (b"; Secure" if secure else b""))


class Liveness:
    """`reachable` for a gateway's tunnel node. An agent address of a route with several backends is watched:
    pinged every PING_INTERVAL when it was not heard from meanwhile (traffic is proof enough: a loaded agent
    gets no pings), and down until it was first heard from and once silent for LIVENESS_LIMIT. Any other address is down only when its agent never
    reached this gateway or has been silent for longer than `silence_limit` (its keepalives' allowance)."""

    def __init__(self, node, silence_limit: float) -> None:
        self.node = node
        self.silence_limit = silence_limit
        self.watched: dict[str, str] = {}  # agent address → our address in its tunnel (the pings' source)
        self.on_down: Callable[[str], None] = lambda address: None  # a watched address just went down
        self._down: set[str] = set()
        self._sequence = 0

    def __call__(self, address: str) -> bool:
        silent = self.node.silence(address)
        if silent is None:
            return False
        if address in self.watched:  # one never heard from (a remembered endpoint, say) is not counted on yet
            return self.node.peer_alive(address) and silent <= LIVENESS_LIMIT
        return silent <= self.silence_limit

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            await trio.sleep(PING_INTERVAL)
            self._sequence += 1
            self._down &= set(self.watched)
            for address, source in list(self.watched.items()):
                silent = self.node.silence(address)
                if silent is not None and (silent >= PING_INTERVAL / 2 or not self.node.peer_alive(address)):
                    self.node.ping(source, address, self._sequence)  # without a session: a handshake first
                if self(address):
                    self._down.discard(address)
                elif address not in self._down:
                    self._down.add(address)
                    self.on_down(address)
