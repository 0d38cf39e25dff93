"""The backend of each connection (tcp) or flow (udp) of a tcp/udp tunnel: the HTTP routes' balancing and
liveness (gateway/backends.py) over the PortRoute's backends, with the client's address as the affinity key.

A route without `backends` (its one plain backend, as version 1 frames have it) goes to its agent_ip.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from contextlib import contextmanager

from kakuremichi.gateway.backends import Backends
from kakuremichi.protocol import PortRoute, RouteBackend


def balancer_name(route: PortRoute) -> str:
    """What the route's balancing state is kept under, beside the HTTP routes' domains."""
    return f"{route.protocol}:{route.public_port}"


def port_addresses(route: PortRoute) -> list[str]:
    """The agent addresses of the route's backends (none listed: only its agent_ip)."""
    return [b.address for b in route.backends or ()]


def choose(backends: Backends, route: PortRoute, client_ip: str, exclude: Collection[str] = ()) -> RouteBackend | None:
    """The backend for a new connection or flow from `client_ip` (None: none is usable); `exclude`: ids tried."""
    if not route.backends:
        return None if exclude else RouteBackend(route.tunnel_id, route.agent_ip)
    key = client_ip.encode() if route.affinity else None
    return backends.pick(balancer_name(route), route.backends, key, exclude)


@contextmanager
def holding(backends: Backends, route: PortRoute, backend: RouteBackend) -> Iterator[None]:
    """Count a connection or flow on one of the route's backends while in the block (the tunnel's API shows it)."""
    if not route.backends:
        yield
        return
    backends.active[backend.id] += 1
    try:
        yield
    finally:
        backends.finished(backend)
