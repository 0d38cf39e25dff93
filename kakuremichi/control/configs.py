"""Each gateway's and agent's complete config, derived from the database (call inside a db_session).

Peers appear only once they can work: an agent without a reported public key is no gateway peer, a gateway
without a public key and endpoint is no agent peer. Lists are sorted so an unchanged config compares equal
and is not pushed again.
"""

from __future__ import annotations

import functools
from typing import Any

import msgspec
from pony.orm import Database

from kakuremichi import protocol
from kakuremichi.control import access, backends, ports
from kakuremichi.control.models import get_setting, preload_optional, utcnow
from kakuremichi.values import Domain, InvalidValue, Target


STOPPED = "stopped"  # an agent's metadata key: it said it was stopping, and has not connected since


def current_version(db: Database) -> int:
    return int(get_setting(db, "config_version") or 0)


def gateway_config(db: Database, gateway_id: str, deployment: access.Deployment | None = None
                   ) -> protocol.GatewayConfig | None:
    gateway = db.Gateway.get(id=gateway_id)
    if gateway is None:
        return None
    my_ip = {row.tunnel.id: row.ip for row in gateway.tunnel_ips}
    tunnels = sorted(filter(_servable, db.Tunnel.select()), key=lambda t: t.domain)
    preload_optional(tunnels, db.Tunnel.port, db.Tunnel.access, db.Tunnel.balancing, db.Tunnel.proxy_header)
    now = utcnow()
    served: dict[Any, set[str]] = {}  # agent → the addresses of its backends, in every servable tunnel
    for tunnel in tunnels:
        for backend in backends.serving(tunnel):
            if backend.agent.public_key:
                served.setdefault(backend.agent, set()).add(f"{backend.address}/32")
    peers = [protocol.AgentPeer(a.public_key, sorted(addresses), skips_checksums=True)
             for a, addresses in sorted(served.items(), key=lambda item: item[0].id)]
    routes = [protocol.RouteConfig(domain=t.domain, agent_ip=t.agent_ip, gateway_ip=my_ip[t.id], tunnel_id=t.id,
                                   enabled=t.enabled, tls_mode=t.tls_mode, force_https=t.force_https,
                                   exit=t.enabled and (t.http_proxy_enabled or t.socks_proxy_enabled),
                                   agent_stopped=_stopped(t.agent), access=access.route_config(t, deployment, now),
                                   **backends.route_fields(t, _stopped), **ports.http_route_fields(t))
              for t in tunnels if t.id in my_ip and t.port is None]
    port_routes = [msgspec.structs.replace(ports.route(t, my_ip[t.id], _stopped(t.agent)),
                                           **backends.route_fields(t, _stopped))
                   for t in tunnels if t.id in my_ip and t.port is not None]
    return protocol.GatewayConfig(version=current_version(db), wireguard_port=gateway.wireguard_port,
                                  addresses=sorted(my_ip.values()), peers=peers, routes=routes,
                                  access_key=access.encoded_key(deployment),
                                  **({"ports": port_routes} if port_routes else {}))


def agent_config(db: Database, agent_id: str) -> protocol.AgentConfig | None:
    agent = db.Agent.get(id=agent_id)
    if agent is None:
        return None
    tunnels = sorted(filter(_servable, {b.tunnel for b in agent.backends} | set(agent.tunnels)), key=lambda t: t.domain)
    allowed_by_gateway: dict[str, list[str]] = {}  # from this agent's tunnels only: the cost grows with them
    for tunnel in tunnels:
        for row in tunnel.gateway_ips:
            allowed_by_gateway.setdefault(row.gateway.id, []).append(f"{row.ip}/32")
    gateways = []
    peered = set()
    for gateway in sorted(db.Gateway.select(lambda g: g.public_key and g.public_endpoint), key=lambda g: g.id):
        allowed = sorted(allowed_by_gateway.get(gateway.id, ()))
        if allowed:
            gateways.append(protocol.GatewayPeer(gateway.public_key, gateway.public_endpoint, allowed,
                                                 skips_checksums=True))
            peered.add(gateway.id)
    mappings = [protocol.TunnelMapping(t.id, t.domain, b.address, b.target, t.enabled and b.enabled,
                                       http_proxy=t.http_proxy_enabled and b.address == t.agent_ip,
                                       socks_proxy=t.socks_proxy_enabled and b.address == t.agent_ip,
                                       gateway_ips=_exit_gateway_ips(t, peered), **extra,
                                       **ports.mapping_fields(t))
                for t in tunnels for b, extra in backends.agent_mappings(t, agent)]
    return protocol.AgentConfig(version=current_version(db), addresses=sorted(m.agent_ip for m in mappings),
                                gateways=gateways, tunnels=mappings)


def _stopped(agent) -> bool:
    return bool((agent.metadata or {}).get(STOPPED))


def _servable(tunnel) -> bool:
    """A tunnel stored before control checked domains and targets as kakuremichi.values does (`*.com`,
    `tcp://…`) is left out: every gateway's or agent's decoder would refuse the whole config for it."""
    return _parses(tunnel.domain, tunnel.target) and all(_parses(tunnel.domain, b.target) for b in tunnel.backends)


@functools.lru_cache(maxsize=65536)  # asked for every tunnel of every config built
def _parses(domain: str, target: str) -> bool:
    try:
        Domain.parse(domain), Target.parse(target)
    except InvalidValue:
        return False
    return True


def _exit_gateway_ips(tunnel, peered: set[str]) -> list[str]:
    """The addresses of a tunnel's gateways that are the agent's peers, in gateway order (the exit's
    failover order)."""
    rows = sorted((row for row in tunnel.gateway_ips if row.gateway.id in peered), key=lambda row: row.gateway.id)
    return [row.ip for row in rows]


def config_for(db: Database, role: str, client_id: str, deployment: access.Deployment | None = None
               ) -> protocol.Config | None:
    """The config of a connected client, or None when it has been deleted."""
    return gateway_config(db, client_id, deployment) if role == "gateway" else agent_config(db, client_id)
