"""Who may use a tcp or udp tunnel's public port: its CIDR rules and its per-source limit (issue 15).

The rules are those of HTTP tunnels (kakuremichi.access.policy: in order, the first whose CIDR holds the
client decides; with any allow rule, a client no rule holds is refused). The limit counts the connections
(tcp) or flows (udp) one client address holds at once. A tunnel naming a login tunnel (loginTunnelId) admits a
client no allow or bypass rule holds only while a login on that http tunnel grants its address (the grants
control pushes, each checked against the clock at connection time). Importing this module loads no Trio.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

from kakuremichi.access.policy import Rule, decide
from kakuremichi.protocol import PortRoute


def rule_refusal(route: PortRoute, client_ip: str, now: float) -> str | None:
    """Why the tunnel's rules or its login grants keep the client out, or None. A `bypass` rule lets in as
    `allow` does: either admits without a login."""
    rules = tuple(Rule.parse(rule.action, rule.cidr) for rule in route.access_rules)
    action = decide(rules, client_ip)
    if action == "deny":
        return "denied by the tunnel's access rules"
    if action is None and route.login_tunnel_id and not granted(route, client_ip, now):
        return "no login from this address (loginTunnelId) within the grant time"
    return None


def granted(route: PortRoute, client_ip: str, now: float) -> bool:
    """Whether a login grant holds the client's address at Unix time `now`."""
    address = grant_key(client_ip)
    return address is not None and route.granted.get(address, 0.0) > now


def grant_key(client_ip: str) -> str | None:
    """How grants name an address: canonical, an IPv4-mapped IPv6 one as IPv4 (a dual-stack listener's
    client); None for what is no address."""
    try:
        address = ipaddress.ip_address(client_ip)
    except ValueError:
        return None
    if address.version == 6 and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return str(address)


class SourceCounts:
    """Connections or flows held per (tunnel, client address)."""

    def __init__(self) -> None:
        self._held: Counter[tuple[str, str]] = Counter()

    def refusal(self, route: PortRoute, client_ip: str, now: float) -> str | None:
        """Why the client may not open one more at Unix time `now`, or None."""
        if reason := rule_refusal(route, client_ip, now):
            return reason
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
