"""Who may use a tcp or udp tunnel's public port: its CIDR rules and its per-source limit (issue 15).

Rules are read in order and the first whose CIDR holds the client decides; a client no rule matches is
let in only when the tunnel has no allow rule (a list of denials blocks those, a list of allowances admits
only those). The limit counts the connections (tcp) or flows (udp) one client address holds at once.
Importing this module loads no Trio.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

from kakuremichi.protocol import PortRoute


def allowed(route: PortRoute, client_ip: str) -> bool:
    address = ipaddress.ip_address(client_ip)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    for rule in route.access_rules:
        network = ipaddress.ip_network(rule.cidr)
        if address.version == network.version and address in network:
            return rule.action == "allow"
    return not any(rule.action == "allow" for rule in route.access_rules)


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
