"""Who may use a tcp or udp tunnel's public port: its CIDR rules and its per-source limit (issue 15).

The rules are those of HTTP tunnels (kakuremichi.access.policy: in order, the first whose CIDR holds the
client decides; with any allow rule, a client no rule holds is refused). The limit counts the connections
(tcp) or flows (udp) one client address holds at once. Importing this module loads no Trio.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

from kakuremichi.access.policy import Rule, decide
from kakuremichi.protocol import PortRoute


def allowed(route: PortRoute, client_ip: str) -> bool:
    """Whether the tunnel's rules let the client in (a `bypass` rule lets in as `allow` does: a raw port has
    no login to skip)."""
    rules = tuple(Rule.parse(rule.action, rule.cidr) for rule in route.access_rules)
    return decide(rules, client_ip) != "deny"


class SourceCounts:
    """Connections or flows held per (tunnel, client address)."""

    def __init__(self) -> None:
        self._held: Counter[tuple[str, str]] = Counter()

    def refusal(self, route: PortRoute, client_ip: str) -> str | None:
        """Why the client may not open one more, or None."""
        if not allowed(route, client_ip):
            return "denied by the tunnel's access rules"
        limit = route.max_connections_per_source
        if limit is not None and self._held[route.tunnel_id, client_ip] >= limit:
            return f"the client already holds {limit}, the tunnel's maxConnectionsPerSource"
        return None

    @contextmanager
    def holding(self, route: PortRoute, client_ip: str) -> Iterator[None]:
        key = (route.tunnel_id, client_ip)
        self._held[key] += 1
        try:
            yield
        finally:
            self._held[key] -= 1
            if not self._held[key]:
                del self._held[key]
