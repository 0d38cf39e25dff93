"""Tunnel subnets and the addresses inside them.

Each tunnel gets one /24 from the pool; its backends count up from .2 (the first, the tunnel's agent address,
is .2) and every gateway gets its own address counting down from .254, so all gateways can serve every tunnel at once and each knows its source address. Subnets
are handed out so consecutive tunnels differ in the second octet (10.1.0.0/24, 10.2.0.0/24, …) as the
original did; the pool's first and last /24 are skipped so its network and broadcast addresses never
appear. The lowest free subnet/address is always taken, so deleted ones are reused.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Collection, Iterable, Iterator

from pony.orm import Database, select

TUNNEL_PREFIX = 24
AGENT_HOST = 2
FIRST_GATEWAY_HOST = 254
LAST_GATEWAY_HOST = 3


class AllocationError(RuntimeError):
    """The pool (or a subnet) has no free address left."""


def parse_pool(text: str) -> ipaddress.IPv4Network:
    """Validate a subnet pool such as 10.0.0.0/8: IPv4, and large enough for at least one tunnel."""
    try:
        pool = ipaddress.IPv4Network(text.strip())
    except ValueError as exc:
        raise ValueError(f"subnet pool {text!r}: {exc}") from None
    if pool.prefixlen > TUNNEL_PREFIX - 2:
        raise ValueError(f"subnet pool {text!r} is too small: use /{TUNNEL_PREFIX - 2} or larger, like 10.0.0.0/8")
    return pool


def candidate_subnets(pool: ipaddress.IPv4Network) -> Iterator[ipaddress.IPv4Network]:
    """The pool's /24s in allocation order: across /16 blocks first, then within them."""
    blocks = list(pool.subnets(new_prefix=max(pool.prefixlen, 16)))
    per_block = 2 ** (TUNNEL_PREFIX - blocks[0].prefixlen)
    first, last = pool.network_address, pool.broadcast_address
    for index in range(per_block):
        for block in blocks:
            subnet = ipaddress.IPv4Network((int(block.network_address) + (index << 8), TUNNEL_PREFIX))
            if first not in subnet and last not in subnet:
                yield subnet


def next_subnet(pool: ipaddress.IPv4Network, used: Collection[str]) -> str:
    """The first subnet of the pool not in `used`."""
    for subnet in candidate_subnets(pool):
        if str(subnet) not in used:
            return str(subnet)
    raise AllocationError(f"subnet pool {pool} is exhausted: delete unused tunnels or configure a larger pool")


def agent_address(subnet: str) -> str:
    return str(ipaddress.IPv4Network(subnet).network_address + AGENT_HOST)


def gateway_address(subnet: str, used: Collection[str]) -> str:
    """The highest free gateway address in `subnet`, counting down from .254."""
    base = ipaddress.IPv4Network(subnet).network_address
    for host in range(FIRST_GATEWAY_HOST, LAST_GATEWAY_HOST - 1, -1):
        address = str(base + host)
        if address not in used:
            return address
    raise AllocationError(f"tunnel subnet {subnet} has no free gateway address")


def backend_address(subnet: str, used: Collection[str]) -> str:
    """The lowest free backend address in `subnet`, counting up from .2 (gateways count down from .254)."""
    base = ipaddress.IPv4Network(subnet).network_address
    for host in range(AGENT_HOST, FIRST_GATEWAY_HOST + 1):
        address = str(base + host)
        if address not in used:
            return address
    raise AllocationError(f"tunnel subnet {subnet} has no free backend address")


def taken_addresses(tunnel) -> set[str]:
    """Every address of `tunnel`'s subnet in use: its backends' and its gateways'."""
    return {row.address for row in tunnel.backends} | {row.ip for row in tunnel.gateway_ips} | {tunnel.agent_ip}


def allocate_tunnel(db: Database, pool: ipaddress.IPv4Network) -> tuple[str, str]:
    """A free subnet and the agent's address in it (inside the caller's db_session)."""
    subnet = next_subnet(pool, set(select(t.subnet for t in db.Tunnel)))
    return subnet, agent_address(subnet)


def assign_gateway_addresses(db: Database, tunnels: Iterable, gateways: Iterable) -> None:
    """Give each gateway an address in each tunnel's subnet where it has none yet."""
    gateways = list(gateways)
    for tunnel in tunnels:
        taken = {row.gateway.id: row.ip for row in tunnel.gateway_ips}
        backends = {row.address for row in tunnel.backends} | {tunnel.agent_ip}
        for gateway in gateways:
            if gateway.id not in taken:
                taken[gateway.id] = gateway_address(tunnel.subnet, set(taken.values()) | backends)
                db.TunnelGatewayIp(tunnel=tunnel, gateway=gateway, ip=taken[gateway.id])
