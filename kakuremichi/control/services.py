"""Gateways, agents and tunnels: list, get, create, update, delete and rotate-key, with their checks against
the database, allocation and JSON form (kakuremichi.control.bodies) — what the REST API (api.py) and the web
UI's forms (web/views.py) both call with the bodies they decoded, so they allocate and word their errors alike.

Database work runs synchronously on the Trio thread, one short db_session per call, so within one process
every allocation is atomic by construction. Changes go through `ControlState.write`: controls sharing a
PostgreSQL database take turns (`lock_for_writing`), the database's unique constraints back that up, a
change that met a row a client session wrote meanwhile (status, stats) is replayed, and each committed change
bumps the global config version and wakes the WebSocket sessions.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from typing import Any

from pony.orm import Database, TransactionIntegrityError, db_session

from kakuremichi.control import access, allocation, auth, backends, bodies, certificates, grants, models, ports
from kakuremichi.control.bodies import ApiError
from kakuremichi.control.models import utcnow
from kakuremichi.control.state import ControlState


def _utc(value: datetime.datetime | None) -> datetime.datetime | None:
    """A database time (naive UTC) as the bodies carry it."""
    return None if value is None else value.replace(tzinfo=datetime.timezone.utc)


def _write(state: ControlState, work: Callable[[Database], Any], bump: bool = True, agents_of=None) -> Any:
    """Run `work` as a write (`ControlState.write`), config-changing unless told; a conflict it could not
    replay is a 409."""
    try:
        return state.write(work, bump=bump, agents_of=agents_of)
    except TransactionIntegrityError:
        raise ApiError(409, "conflict", "a concurrent change conflicted with this one; retry") from None


def _write_tunnel(state: ControlState, tunnel_id: str | None, work: Callable[[Database], Any]) -> Any:
    """`_write` of a change to one tunnel (`tunnel_id`, or the one `work` creates and returns): it wakes every
    gateway, and of the agents only those serving the tunnel before or after the change."""
    def agents_serving(db: Database, item_id: str | None) -> set[str]:
        return backends.agent_ids(db.Tunnel.get(id=item_id)) if item_id and bodies.is_identifier(item_id) else set()

    def scoped(db: Database) -> tuple[Any, set[str]]:
        before = agents_serving(db, tunnel_id)
        result = work(db)  # raises the 404 of an unknown id
        return result, before | agents_serving(db, tunnel_id or result["id"])

    return _write(state, scoped, agents_of=lambda written: written[1])[0]


def get_row(db: Database, kind: str, item_id: str) -> Any:
    """The agent's, gateway's or tunnel's row (inside a db_session); a 404 if there is none."""
    row = getattr(db, ENTITIES[kind]).get(id=item_id) if bodies.is_identifier(item_id) else None
    if row is None:
        raise ApiError(404, "not_found", f"no {kind} with id {item_id}")
    return row


def _unique_name(db: Database, role: str, name: str, own_id: str | None = None) -> None:
    other = getattr(db, ENTITIES[role]).get(name=name)
    if other is not None and other.id != own_id:
        raise ApiError(409, "duplicate", f"a {role} named {name!r} already exists",
                       {"name": "already in use"})


# -- agents and gateways ---------------------------------------------------------------------------------------


def agent_json(agent) -> dict:
    return bodies.as_json(bodies.Agent(
        id=agent.id, name=agent.name, public_key=agent.public_key, status=agent.status,
        last_seen_at=_utc(agent.last_seen_at), metadata=agent.metadata or {}, created_at=_utc(agent.created_at),
        tunnel_ids=sorted(t.id for t in agent.tunnels)))


def gateway_json(gateway) -> dict:
    return bodies.as_json(bodies.Gateway(
        id=gateway.id, name=gateway.name, public_key=gateway.public_key, public_endpoint=gateway.public_endpoint,
        wireguard_port=gateway.wireguard_port, metadata=gateway.metadata or {}, status=gateway.status,
        last_seen_at=_utc(gateway.last_seen_at), created_at=_utc(gateway.created_at),
        workers=[_worker(link) for link in gateway.workers.order_by(lambda w: w.index)]))


def _worker(link) -> bodies.GatewayWorker:
    worker = link.worker
    return bodies.GatewayWorker(index=link.index, id=worker.id, public_key=worker.public_key,
                                public_endpoint=worker.public_endpoint, status=worker.status,
                                last_seen_at=_utc(worker.last_seen_at))


def _create_client(state: ControlState, role: str, body: bodies.AgentCreate | bodies.GatewayCreate) -> dict:
    """Create an agent/gateway: its JSON plus `apiKey`, the only time the key is shown."""
    values = bodies.given(body)
    key = auth.new_key(auth.PREFIXES[role])

    def work(db: Database) -> dict:
        _unique_name(db, role, values["name"])
        row = getattr(db, ENTITIES[role])(api_key_hash=auth.key_hash(key), **values)
        if role == "gateway":
            allocation.assign_gateway_addresses(db, db.Tunnel.select(), [row])
        row.flush()
        return SERIALISERS[role](row)

    return {**_write(state, work), "apiKey": key}


def _update_client(state: ControlState, role: str, item_id: str, body: bodies.AgentUpdate | bodies.GatewayUpdate
                   ) -> dict:
    values = bodies.given(body)

    def work(db: Database) -> dict:
        row = get_row(db, role, item_id)
        if "name" in values:
            _unique_name(db, role, values["name"], item_id)
        row.set(**values)
        return SERIALISERS[role](row)

    return _write(state, work)


def rotate_client_key(state: ControlState, role: str, item_id: str) -> dict:
    """A new key for the agent/gateway; the old one stops working and its session is closed."""
    key = auth.new_key(auth.PREFIXES[role])

    def work(db: Database) -> list[str]:
        row = get_row(db, role, item_id)
        row.api_key_hash = auth.key_hash(key)
        return [link.worker.id for link in row.workers] if role == "gateway" else []  # they log in with it too

    worker_ids = _write(state, work, bump=False)
    for client_id in (item_id, *worker_ids):
        state.disconnect(role, client_id, 4001, "API key rotated")
    return bodies.as_json(bodies.KeyRotation(id=item_id, api_key=key))


# -- tunnels ---------------------------------------------------------------------------------------------------


def tunnel_json(tunnel) -> dict:
    return bodies.as_json(bodies.Tunnel(
        id=tunnel.id, domain=ports.shown_domain(tunnel.domain), agent_id=tunnel.agent.id, target=tunnel.target, enabled=tunnel.enabled,
        description=tunnel.description or "", subnet=tunnel.subnet, agent_ip=tunnel.agent_ip,
        gateway_ips={row.gateway.id: row.ip for row in tunnel.gateway_ips}, tls_mode=tunnel.tls_mode,
        force_https=tunnel.force_https, http_proxy_enabled=tunnel.http_proxy_enabled,
        socks_proxy_enabled=tunnel.socks_proxy_enabled, created_at=_utc(tunnel.created_at),
        certificate=tunnel_certificate(tunnel), access=access.view(tunnel), **ports.view(tunnel),
        backends=backends.as_bodies(tunnel, backends.active_connections(tunnel._database_)),
        health_check=backends.tunnel_check(tunnel), affinity=backends.affinity(tunnel)))


def tunnel_certificate(tunnel) -> bodies.Certificate | None:
    """The shared ACME certificate, without its key; None until one is stored, and for the other TLS modes,
    whose certificates stay on the gateways."""
    if tunnel.tls_mode != "acme":
        return None
    now = utcnow()
    cert = certificates.summary(tunnel._database_, tunnel.domain, now)
    if cert is None:
        return None
    lease = cert.lease and bodies.Lease(holder=cert.lease.holder, expires_at=_utc(cert.lease.expires_at))
    return bodies.Certificate(issuer=cert.issuer, not_before=_utc(cert.not_before), not_after=_utc(cert.not_after),
                              days_left=cert.days_left(now), fingerprint_sha256=cert.fingerprint_sha256,
                              domains=list(cert.domains), lease=lease)


def _tunnel_columns(db: Database, values: dict, own_id: str | None = None) -> dict:
    """Database columns for the tunnel fields a request sets (its port's apart), checking the agent exists and
    the domain is free."""
    columns = {k: val for k, val in values.items() if k not in NOT_COLUMNS}
    if "agent_id" in values:
        columns["agent"] = db.Agent.get(id=values["agent_id"])
        if columns["agent"] is None:
            raise ApiError(400, "validation_failed", "invalid request: agentId", {"agentId": "no such agent"})
    if values.get("domain") is not None:
        other = db.Tunnel.get(domain=values["domain"])
        if other is not None and other.id != own_id:
            raise ApiError(409, "duplicate", f"a tunnel for {values['domain']} already exists",
                           {"domain": "already in use"})
    return columns


def _create_tunnel(state: ControlState, body: bodies.TunnelCreate) -> dict:
    """Create a tunnel with its own subnet and an address for every gateway."""

    given = bodies.given(body)  # decoded: agentId and target both, or backends (TunnelCreate.missing)
    backends.shorthand(given)
    specs = given.get("backends") or [bodies.BackendSpec(agent_id=given["agent_id"], target=given["target"])]

    def work(db: Database) -> dict:
        values, port = ports.split(given)
        ports.check(port["protocol"], {**values, "target": str(specs[0].target)}, port)
        columns = _tunnel_columns(db, values)
        columns["agent"] = columns.get("agent") or db.Agent.get(id=specs[0].agent_id)
        columns["target"] = str(specs[0].target)
        try:
            subnet, agent_ip = allocation.allocate_tunnel(db, state.pool)
        except allocation.AllocationError as exc:
            raise ApiError(409, "pool_exhausted", str(exc)) from None
        if columns["agent"] is None:
            raise ApiError(400, "validation_failed", "invalid request: backends",
                           {"backends": f"no such agent {specs[0].agent_id}"})
        if columns["domain"] is None:  # a tcp/udp tunnel without one
            columns["id"] = models.new_id()
            columns["domain"] = ports.placeholder_domain(columns["id"])
        tunnel = db.Tunnel(subnet=subnet, agent_ip=agent_ip, **columns)
        backends.set_backends(db, tunnel, specs)
        backends.set_balancing(db, tunnel, values)
        ports.create(db, tunnel, port, state.public_ports)
        access.store(db, tunnel, body.access)
        allocation.assign_gateway_addresses(db, [tunnel], db.Gateway.select())
        tunnel.flush()
        return tunnel_json(tunnel)

    return _write_tunnel(state, None, work)


def _update_tunnel(state: ControlState, item_id: str, body: bodies.TunnelUpdate) -> dict:
    def work(db: Database) -> dict:
        tunnel = get_row(db, "tunnel", item_id)
        values, port = ports.split(bodies.given(body))
        ports.check_update(tunnel, values, port)
        columns = _tunnel_columns(db, values, item_id)
        if columns.get("domain", tunnel.domain) != tunnel.domain:
            certificates.forget(db, tunnel.domain)
        agent, target = columns.pop("agent", None), columns.pop("target", None)
        tunnel.set(**columns)
        if backends.shorthand(values):
            backends.set_first(tunnel, agent, target)
        elif "backends" in values:
            backends.set_backends(db, tunnel, values["backends"])
        backends.set_balancing(db, tunnel, values)
        ports.update(db, tunnel, port, state.public_ports)
        if body.access is not bodies.UNSET:
            access.store(db, tunnel, body.access)
        return tunnel_json(tunnel)

    return _write_tunnel(state, item_id, work)


# -- share links and sessions of protected tunnels (control/access.py) -----------------------------------------


def create_share_link(state: ControlState, tunnel_id: str, body: bodies.ShareLinkCreate) -> dict:
    return _write(state, lambda db: access.create_link(db, get_row(db, "tunnel", tunnel_id), body, state.access.key),
                  bump=False)


def share_links(state: ControlState, tunnel_id: str) -> dict:
    with db_session:
        return access.links(get_row(state.db, "tunnel", tunnel_id))


def revoke_share_link(state: ControlState, tunnel_id: str, link_id: str) -> None:
    _write(state, lambda db: access.revoke_link(db, get_row(db, "tunnel", tunnel_id), link_id))


def revoke_sessions(state: ControlState, tunnel_id: str, body: bodies.SessionRevocation) -> dict:
    def work(db: Database) -> dict:
        tunnel = get_row(db, "tunnel", tunnel_id)
        access.revoke_sessions(db, tunnel, body.email)
        return tunnel_json(tunnel)

    return _write(state, work)


def login_tunnels(state: ControlState) -> list[dict]:
    """The http tunnels a tcp/udp tunnel's logins may happen on (web form), by domain."""
    with db_session:
        return grants.login_tunnels(state.db)


BACKEND_FIELDS = ("agent_id", "backends", "health_check", "affinity")  # set through kakuremichi.control.backends
NOT_COLUMNS = (*BACKEND_FIELDS, "access")  # access: kept by kakuremichi.control.access


# -- every kind ------------------------------------------------------------------------------------------------

ENTITIES = {"agent": "Agent", "gateway": "Gateway", "tunnel": "Tunnel"}
SERIALISERS = {"agent": agent_json, "gateway": gateway_json, "tunnel": tunnel_json}
_ORDER = {"agent": lambda row: row.created_at, "gateway": lambda row: row.created_at, "tunnel": lambda row: row.domain}


def ordered(db: Database, kind: str):
    """Every agent, gateway or tunnel (inside a db_session), in the order lists show them; a gateway's workers are
    listed in it, not beside it."""
    rows = getattr(db, ENTITIES[kind]).select()
    if kind == "gateway":
        rows = rows.filter(lambda g: g.worker_of is None)
    return rows.order_by(_ORDER[kind])


def page(state: ControlState, kind: str, limit: int, offset: int) -> dict:
    with db_session:
        query = ordered(state.db, kind)
        return bodies.as_json(bodies.Page(items=[SERIALISERS[kind](row) for row in query.limit(limit, offset=offset)],
                                          total=query.count(), limit=limit, offset=offset))


def get(state: ControlState, kind: str, item_id: str) -> dict:
    with db_session:
        return SERIALISERS[kind](get_row(state.db, kind, item_id))


def create(state: ControlState, kind: str, body: bodies.Body) -> dict:
    """Create one from its bodies.CREATES body; an agent's or gateway's answer carries its API key, shown only
    then."""
    return _create_tunnel(state, body) if kind == "tunnel" else _create_client(state, kind, body)


def update(state: ControlState, kind: str, item_id: str, body: bodies.Body) -> dict:
    """Change the fields its bodies.UPDATES body sets."""
    return _update_tunnel(state, item_id, body) if kind == "tunnel" else _update_client(state, kind, item_id, body)


def delete(state: ControlState, kind: str, item_id: str) -> None:
    """Delete it; an agent's tunnels go with it, and a tunnel's certificate with the tunnel (models.py)."""
    if kind == "tunnel":
        _write_tunnel(state, item_id, lambda db: get_row(db, kind, item_id).delete())
    else:
        _write(state, lambda db: get_row(db, kind, item_id).delete())


def agent_names(state: ControlState) -> list[dict]:
    """Every agent's id and name, by name: what a tunnel's form offers."""
    with db_session:
        return [{"id": a.id, "name": a.name} for a in state.db.Agent.select().order_by(lambda a: a.name)]


def counts(state: ControlState) -> tuple[dict[str, int], dict[str, int]]:
    """How many gateways, agents and tunnels there are, and how many gateways and agents are online."""
    with db_session:
        db = state.db
        total = {"gateway": ordered(db, "gateway").count(), "agent": db.Agent.select().count(),
                 "tunnel": db.Tunnel.select().count()}
        online = {"gateway": ordered(db, "gateway").filter(lambda g: g.status == "online").count(),
                  "agent": db.Agent.select(lambda a: a.status == "online").count()}
    return total, online
