"""tcp and udp tunnels: their public port (requested, or the lowest free one of --public-ports), PROXY protocol
and udp flow limits, kept in the tunnel_ports table beside the tunnel (issue 15). Their `access` (address rules,
maxConnectionsPerSource) is kept as every tunnel's is, by control/access.py.

A tcp/udp tunnel needs no domain. The tunnels table keeps one for every row (its column predates these
tunnels), so one without a domain stores a name of its own under `.invalid` (RFC 6761: it resolves nowhere,
and no HTTP route is made for it), which the API shows as null.
"""

from __future__ import annotations

from typing import Any

from pony.orm import Database, select

from kakuremichi import protocol
from kakuremichi.control import grants
from kakuremichi.control.bodies import ApiError
from kakuremichi.control.models import utcnow
from kakuremichi.values import PortRanges, Target

NO_DOMAIN = ".port.invalid"  # the stored domain of a tcp/udp tunnel without one ends so
FIELDS = ("protocol", "public_port", "proxy_protocol", "name", "udp_idle_timeout", "udp_max_flows")


def split(values: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A request's given fields as (the tunnel's, the port's)."""
    return ({k: v for k, v in values.items() if k not in FIELDS},
            {k: v for k, v in values.items() if k in FIELDS})


def placeholder_domain(tunnel_id: str) -> str:
    return tunnel_id + NO_DOMAIN


def shown_domain(domain: str) -> str | None:
    return None if domain.endswith(NO_DOMAIN) else domain


def label(tunnel: dict[str, Any]) -> str:
    """What lists and titles call a tunnel (its JSON): its domain, else its name, else its protocol and port."""
    return tunnel["domain"] or tunnel["name"] or f"{tunnel['protocol']} port {tunnel['publicPort']}"


def _invalid(field: str, message: str, status: int = 400, code: str = "validation_failed") -> ApiError:
    first, *rest = field.split("_")
    name = first + "".join(word.title() for word in rest)  # as the bodies spell it
    return ApiError(status, code, f"invalid request: {name}" if status == 400 else message, {name: message})


def check(kind: str, tunnel: dict[str, Any], port: dict[str, Any]) -> None:
    """Refuse what does not fit the tunnel's protocol `kind` (tunnel: its columns as they will be)."""
    if kind == "http":
        if tunnel.get("domain") is None:
            raise _invalid("domain", "required for an http tunnel")
        extra = [field for field in ("public_port", "name") if port.get(field) is not None]
        if extra:
            raise _invalid(extra[0], "only for a tcp or udp tunnel")
        if getattr(tunnel.get("access"), "max_connections_per_source", None) is not None:
            raise _invalid("access.maxConnectionsPerSource", "only for a tcp or udp tunnel")
        if port.get("proxy_protocol") and tunnel.get("target") and Target.parse(tunnel["target"]).tls:
            raise _invalid("proxy_protocol", "the header goes before TLS, which the agent speaks to an https:// "
                                             "target: use a host:port target, or no proxyProtocol")
        return
    access = tunnel.get("access")
    if access and access.mode != "public":
        raise _invalid("access.mode", "a tcp or udp tunnel has no login: only public, with rules and "
                                      "maxConnectionsPerSource")
    if Target.parse(tunnel["target"]).tls and kind == "udp":
        raise _invalid("target", "must be host:port for a udp tunnel (no https://)")
    if kind == "udp" and port.get("proxy_protocol") == "v1":
        raise _invalid("proxy_protocol", "v1 is text over a TCP stream: use v2 for a udp tunnel")


def check_update(tunnel, values: dict[str, Any], port: dict[str, Any]) -> None:
    """Refuse a PATCH that does not fit the tunnel; a tcp/udp tunnel's domain set to null gets its own again."""
    kind = tunnel.port.protocol if tunnel.port else "http"
    if port.get("protocol", kind) != kind:
        raise _invalid("protocol", "cannot change: create a new tunnel with the other protocol")
    check(kind, {"domain": shown_domain(tunnel.domain), "target": tunnel.target, **values},
          {"proxy_protocol": proxy_protocol(tunnel), **port})
    if "domain" in values and values["domain"] is None:
        values["domain"] = placeholder_domain(tunnel.id)


def create(db: Database, tunnel, port: dict[str, Any], ranges: PortRanges) -> None:
    """The port row of a new tcp/udp tunnel, or an http tunnel's PROXY protocol (inside the caller's
    transaction)."""
    kind = port["protocol"]
    if kind == "http":
        _set_proxy_header(db, tunnel, port.get("proxy_protocol"))
        return
    number = port.get("public_port")
    number = _allocate(db, kind, ranges) if number is None else _claim(db, kind, number, ranges, None)
    db.TunnelPort(tunnel=tunnel, protocol=kind, public_port=number, name=port.get("name") or "",
                  proxy_protocol=port.get("proxy_protocol"),
                  udp_idle_timeout=port.get("udp_idle_timeout", protocol.UDP_IDLE_TIMEOUT),
                  udp_max_flows=port.get("udp_max_flows", protocol.UDP_MAX_FLOWS))


def update(db: Database, tunnel, port: dict[str, Any], ranges: PortRanges) -> None:
    """Apply a PATCH's port fields to a tcp/udp tunnel's row (an http tunnel's: its PROXY protocol)."""
    row = tunnel.port
    if row is None:
        if "proxy_protocol" in port:
            _set_proxy_header(db, tunnel, port["proxy_protocol"])
        return
    changes = {k: v for k, v in port.items() if k != "protocol"}
    if changes.get("public_port") is not None and changes["public_port"] != row.public_port:
        changes["public_port"] = _claim(db, row.protocol, changes["public_port"], ranges, tunnel.id)
    elif "public_port" in changes:
        del changes["public_port"]  # null or the same: it keeps its port
    if "name" in changes:
        changes["name"] = changes["name"] or ""
    row.set(**changes)


def _set_proxy_header(db: Database, tunnel, version: str | None) -> None:
    row = tunnel.proxy_header
    if version is None:
        if row is not None:
            row.delete()
    elif row is None:
        db.TunnelProxyHeader(tunnel=tunnel, version=version)
    else:
        row.version = version


def proxy_protocol(tunnel) -> str | None:
    """The PROXY protocol version the tunnel's connections to its target begin with, if any."""
    if tunnel.port is not None:
        return tunnel.port.proxy_protocol
    return tunnel.proxy_header.version if tunnel.proxy_header is not None else None


def http_route_fields(tunnel) -> dict[str, Any]:
    """What a gateway's RouteConfig carries of an http tunnel's PROXY protocol (nothing when off, as version 1
    sent it)."""
    version = proxy_protocol(tunnel)
    return {"proxy_protocol": version} if version else {}


def _claim(db: Database, kind: str, number: int, ranges: PortRanges, own_id: str | None) -> int:
    if number not in ranges:
        raise _invalid("public_port", f"{number} is outside the public ports ({ranges}, "
                                      f"kakuremichi control --public-ports)")
    other = db.TunnelPort.get(protocol=kind, public_port=number)
    if other is not None and other.tunnel.id != own_id:
        raise _invalid("public_port", f"{kind} port {number} is already used by tunnel {other.tunnel.id}",
                       409, "duplicate")
    return number


def _allocate(db: Database, kind: str, ranges: PortRanges) -> int:
    used = set(select(p.public_port for p in db.TunnelPort if p.protocol == kind))
    for number in ranges:
        if number not in used:
            return number
    raise ApiError(409, "pool_exhausted", f"every {kind} port of {ranges} is in use: delete unused tunnels or "
                                          f"widen kakuremichi control --public-ports")


def view(tunnel) -> dict[str, Any]:
    """The tunnel body's port fields (inside a db_session)."""
    row = tunnel.port
    if row is None:
        return {"protocol": "http", "public_port": None, "proxy_protocol": proxy_protocol(tunnel), "name": None,
                "udp_idle_timeout": None, "udp_max_flows": None, "bind_errors": {}}
    return {"protocol": row.protocol, "public_port": row.public_port, "proxy_protocol": row.proxy_protocol,
            "name": row.name or None, "udp_idle_timeout": row.udp_idle_timeout if row.protocol == "udp" else None,
            "udp_max_flows": row.udp_max_flows if row.protocol == "udp" else None,
            "bind_errors": bind_errors(tunnel)}


def bind_errors(tunnel) -> dict[str, str]:
    """Online gateways that reported they cannot listen on the tunnel's port: gateway name → their error."""
    errors = {}
    for gateway in tunnel._database_.Gateway.select(lambda g: g.status == "online"):
        reported = ((gateway.metadata or {}).get("stats") or {}).get(protocol.PORT_ERRORS)
        if isinstance(reported, dict) and isinstance(reported.get(tunnel.id), str):
            errors[gateway.name] = reported[tunnel.id]
    return errors


def mapping_fields(tunnel) -> dict[str, Any]:
    """What an agent's TunnelMapping carries of a tcp/udp tunnel (nothing for http, as version 1 sent it)."""
    row = tunnel.port
    if row is None:
        return {}
    return {"protocol": row.protocol, **({"udp_idle_timeout": row.udp_idle_timeout} if row.protocol == "udp" else {})}


def route(tunnel, gateway_ip: str, agent_stopped: bool) -> protocol.PortRoute:
    """What a gateway needs of a tcp/udp tunnel."""
    row = tunnel.port
    access = tunnel.access.settings if tunnel.access is not None else {}
    return protocol.PortRoute(
        tunnel_id=tunnel.id, protocol=row.protocol, public_port=row.public_port, agent_ip=tunnel.agent_ip,
        gateway_ip=gateway_ip, enabled=tunnel.enabled, proxy_protocol=row.proxy_protocol,
        udp_idle_timeout=row.udp_idle_timeout, udp_max_flows=row.udp_max_flows,
        access_rules=[protocol.AccessRule(rule["action"], rule["cidr"]) for rule in access.get("rules", ())],
        max_connections_per_source=access.get("max_connections_per_source"), agent_stopped=agent_stopped,
        login_tunnel_id=access.get("login_tunnel_id"), granted=grants.pushed(tunnel, utcnow()))
