"""The route table: which agent serves which domain, swapped atomically when control pushes config.

Every exchange in flight holds its route (`RouteTable.hold`); when a new config withdraws a route,
disables it, points it elsewhere or changes its access policy (a revoked session must not keep its WebSocket),
only the exchanges holding that route are cancelled. Everything
else — other domains, and domains whose upstream did not change — keeps running untouched.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import trio

from kakuremichi.access.policy import AccessPolicy
from kakuremichi.values import Domain, wildcard_parent


class TlsMode(str, enum.Enum):
    """Where a route's certificate comes from."""

    ACME = "acme"  # obtained and renewed by this gateway over ACME HTTP-01
    CUSTOM = "custom"  # brought by the user, installed into the certificate store
    SELF_SIGNED = "self-signed"  # development: generated locally, browsers will warn
    OFF = "off"  # plain HTTP only


@dataclass(frozen=True)
class Route:
    """One public domain and the tunnel endpoint (agent address inside the tunnel subnet) behind it."""

    domain: str
    address: str
    port: int
    enabled: bool = True
    force_https: bool = False
    tls: TlsMode = TlsMode.ACME
    tunnel_id: str | None = None
    agent_stopped: bool = False  # its agent stopped cleanly (control said so): requests get a 502 at once
    access: AccessPolicy | None = None  # None: public (kakuremichi.access)
    # several backends (kakuremichi.gateway.backends picks one per exchange); empty: `address` is the only one
    backends: tuple[Backend, ...] = ()
    affinity: bool = False  # a client address keeps its backend
    backend_id: str | None = None  # this route is one backend's upstream, inside the route of its domain
    proxy_protocol: str | None = None  # "v1"/"v2": upstream connections begin with the client's PROXY header

    def __post_init__(self) -> None:
        object.__setattr__(self, "domain", str(Domain.parse(self.domain)))
        object.__setattr__(self, "tls", TlsMode(self.tls))
        if not 0 < self.port < 65536:
            raise ValueError(f"route {self.domain}: port {self.port} out of range")

    @property
    def upstream(self) -> tuple[str, int]:
        """Where requests go; routes sharing it share pooled upstream connections."""
        return self.address, self.port


@dataclass(frozen=True, eq=False)
class Backend:
    """One backend of a route as the balancer sees it (kakuremichi.balancing.Backend), with `route`, the upstream
    its exchanges use (its address; what pooled connections and cancellations are keyed on)."""

    id: str
    route: Route
    weight: int = 1
    priority: int = 0
    enabled: bool = True
    draining: bool = False
    health: str = "unknown"
    agent_stopped: bool = False

    @property
    def address(self) -> str:
        """Its agent's address in the tunnel (as protocol.RouteBackend has it)."""
        return self.route.address


class RouteTable:
    """Domain → Route, replaced as a whole; lookups see either the old or the new table, never a mix."""

    def __init__(self, routes: Iterable[Route] = ()) -> None:
        self._routes: dict[str, Route] = {}
        self._holders: dict[Route, set[trio.CancelScope]] = {}
        self.replace(routes)

    def lookup(self, host: str) -> Route | None:
        """The enabled route for a normalised host: exact name first, then a `*.parent` wildcard."""
        route = self._routes.get(host)
        if route is None:
            parent = wildcard_parent(host)
            route = self._routes.get(parent) if parent else None
        return route if route is not None and route.enabled else None

    def replace(self, routes: Iterable[Route]) -> None:
        """Install a new table; exchanges on withdrawn, disabled or re-targeted routes are cancelled."""
        table: dict[str, Route] = {}
        for route in routes:
            if route.domain in table:
                raise ValueError(f"duplicate route for {route.domain}")
            table[route.domain] = route
        self._routes = table
        for route, scopes in list(self._holders.items()):
            if not self._still_served(route):
                for scope in scopes:
                    scope.cancel()

    def _still_served(self, route: Route) -> bool:
        """A domain's route holds while it is served by some upstream; a backend's while its domain still has it
        enabled (draining included: its exchanges finish)."""
        new = self._routes.get(route.domain)
        if new is None or not new.enabled or new.access != route.access:  # a new policy: exchanges start over
            return False
        if route.backend_id is not None:  # a route left with one plain backend has none listed: its address
            upstreams = [b.route.upstream for b in new.backends if b.enabled] if new.backends else [new.upstream]
            return route.upstream in upstreams
        return bool(new.backends) or new.upstream == route.upstream

    def hold(self, route: Route, scope: trio.CancelScope) -> _Hold:
        """While in the block, a config change withdrawing `route` cancels `scope` (the exchange's)."""
        return _Hold(self, route, scope)

    def in_flight(self) -> dict[Route, int]:
        """How many exchanges hold each route now (the metrics' active requests per tunnel)."""
        return {route: len(scopes) for route, scopes in self._holders.items()}

    def __iter__(self) -> Iterator[Route]:
        return iter(list(self._routes.values()))


class _Hold:
    """`RouteTable.hold`'s context manager; a class, not a generator, since every request enters one."""

    __slots__ = ("table", "route", "scope")

    def __init__(self, table: RouteTable, route: Route, scope: trio.CancelScope) -> None:
        self.table = table
        self.route = route
        self.scope = scope

    def __enter__(self) -> None:
        if not self.table._still_served(self.route):
            self.scope.cancel()
        self.table._holders.setdefault(self.route, set()).add(self.scope)

    def __exit__(self, *exc_info) -> None:
        holders = self.table._holders
        scopes = holders[self.route]
        scopes.discard(self.scope)
        if not scopes:
            del holders[self.route]
