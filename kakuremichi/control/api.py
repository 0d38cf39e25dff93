"""The admin REST API: agents, gateways and tunnels, behind the admin bearer token.

Database work runs synchronously on the Trio thread, one short db_session per request, so within one
process every allocation is atomic by construction. Changes go through `ControlState.write`: controls sharing
a PostgreSQL database take turns (`lock_for_writing`), the database's unique constraints back that up, a
change that met a row a client session wrote meanwhile (status, stats) is replayed, and each committed change
bumps the global config version and wakes the WebSocket sessions.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from pony.orm import Database, TransactionIntegrityError, db_session
from quart import Blueprint, request
from quart_trio.wrappers.response import TrioResponse as Response

from kakuremichi.control import allocation, auth, certificates, validation as v
from kakuremichi.control.models import utcnow
from kakuremichi.control.state import ControlState, current
from kakuremichi.control.validation import ApiError

blueprint = Blueprint("api", __name__, url_prefix="/api")


@blueprint.before_request
async def require_admin() -> None:
    auth.require_bearer(request.headers.get("Authorization"), current().admin_token_hash, what="the admin token kma_…")


async def _body() -> Any:
    raw = await request.get_data()
    try:
        return json.loads(raw or b"null")
    except ValueError as exc:
        raise ApiError(400, "invalid_json", f"the request body is not JSON: {exc}") from None


def json_response(data: Any, status: int = 200) -> Response:
    return Response(json.dumps(data), status=status, content_type="application/json")


def _iso(value) -> str | None:
    return None if value is None else value.isoformat() + "Z"


def _mutate(state: ControlState, work: Callable[[Database], Any]) -> Any:
    """Run `work` as a config-changing write (`ControlState.write`); a conflict it could not replay is a 409."""
    try:
        return state.write(work, bump=True)
    except TransactionIntegrityError:
        raise ApiError(409, "conflict", "a concurrent change conflicted with this one; retry") from None


def _list(entity_name: str, serialise: Callable[[Any], dict], order: Callable[[Any], Any]) -> Response:
    limit, offset = v.page(request.args)
    state = current()
    with db_session:
        query = getattr(state.db, entity_name).select().order_by(order)
        body = {"items": [serialise(row) for row in query.limit(limit, offset=offset)],
                "total": query.count(), "limit": limit, "offset": offset}
    return json_response(body)


def get_row(db: Database, entity_name: str, item_id: str) -> Any:
    row = getattr(db, entity_name).get(id=item_id) if v.is_identifier(item_id) else None
    if row is None:
        raise ApiError(404, "not_found", f"no {entity_name.lower()} with id {item_id}")
    return row


def _unique_name(db: Database, entity_name: str, name: str, own_id: str | None = None) -> None:
    other = getattr(db, entity_name).get(name=name)
    if other is not None and other.id != own_id:
        raise ApiError(409, "duplicate", f"a {entity_name.lower()} named {name!r} already exists",
                       {"name": "already in use"})


# -- agents and gateways ---------------------------------------------------------------------------------------


def agent_json(agent) -> dict:
    return {"id": agent.id, "name": agent.name, "publicKey": agent.public_key, "status": agent.status,
            "lastSeenAt": _iso(agent.last_seen_at), "metadata": agent.metadata or {},
            "createdAt": _iso(agent.created_at), "tunnelIds": sorted(t.id for t in agent.tunnels)}


def gateway_json(gateway) -> dict:
    return {"id": gateway.id, "name": gateway.name, "publicKey": gateway.public_key,
            "publicEndpoint": gateway.public_endpoint, "wireguardPort": gateway.wireguard_port,
            "metadata": gateway.metadata or {},
            "status": gateway.status, "lastSeenAt": _iso(gateway.last_seen_at), "createdAt": _iso(gateway.created_at)}


_CLIENT_KINDS = {
    "agent": ("Agent", agent_json, {"name": (v.name, True), "metadata": (v.metadata, False)}),
    "gateway": ("Gateway", gateway_json, {"name": (v.name, True), "wireguardPort": (v.optional_port, False),
                                          "metadata": (v.metadata, False)}),
}
_CLIENT_COLUMNS = {"name": "name", "metadata": "metadata", "wireguardPort": "wireguard_port"}


def create_client(role: str, body: Any) -> dict:
    """Validate `body` and create an agent/gateway: its JSON plus `apiKey`, the only time the key is shown."""
    entity, serialise, fields = _CLIENT_KINDS[role]
    values = v.parse_body(body, fields)
    key = auth.new_key(auth.PREFIXES[role])

    def work(db: Database) -> dict:
        _unique_name(db, entity, values["name"])
        row = getattr(db, entity)(api_key_hash=auth.key_hash(key),
                                  **{_CLIENT_COLUMNS[k]: val for k, val in values.items()})
        if role == "gateway":
            allocation.assign_gateway_addresses(db, db.Tunnel.select(), [row])
        row.flush()
        return serialise(row)

    return {**_mutate(current(), work), "apiKey": key}


def update_client(role: str, item_id: str, body: Any) -> dict:
    entity, serialise, fields = _CLIENT_KINDS[role]
    values = v.parse_body(body, fields, partial=True)

    def work(db: Database) -> dict:
        row = get_row(db, entity, item_id)
        if "name" in values:
            _unique_name(db, entity, values["name"], item_id)
        row.set(**{_CLIENT_COLUMNS[k]: val for k, val in values.items()})
        return serialise(row)

    return _mutate(current(), work)


def delete_client(role: str, item_id: str) -> None:
    _mutate(current(), lambda db: get_row(db, _CLIENT_KINDS[role][0], item_id).delete())


def rotate_client_key(role: str, item_id: str) -> dict:
    """A new key for the agent/gateway; the old one stops working and its session is closed."""
    key = auth.new_key(auth.PREFIXES[role])
    state = current()
    with db_session:
        get_row(state.db, _CLIENT_KINDS[role][0], item_id).api_key_hash = auth.key_hash(key)
    state.disconnect(role, item_id, 4001, "API key rotated")
    return {"id": item_id, "apiKey": key}


def _client_routes(role: str) -> None:
    """List/create/get/update/delete/rotate-key for agents or gateways, which differ only in fields."""
    entity, serialise, _ = _CLIENT_KINDS[role]
    base = f"/{role}s"

    async def list_clients() -> Response:
        return _list(entity, serialise, lambda row: row.created_at)

    async def create() -> Response:
        return json_response(create_client(role, await _body()), 201)

    async def get_client(item_id: str) -> Response:
        with db_session:
            return json_response(serialise(get_row(current().db, entity, item_id)))

    async def update(item_id: str) -> Response:
        return json_response(update_client(role, item_id, await _body()))

    async def delete(item_id: str) -> Response:
        delete_client(role, item_id)
        return Response(status=204)

    async def rotate_key(item_id: str) -> Response:
        return json_response(rotate_client_key(role, item_id))

    for path, view, methods in ((base, list_clients, ["GET"]), (base, create, ["POST"]),
                                (base + "/<item_id>", get_client, ["GET"]),
                                (base + "/<item_id>", update, ["PATCH"]),
                                (base + "/<item_id>", delete, ["DELETE"]),
                                (base + "/<item_id>/rotate-key", rotate_key, ["POST"])):
        blueprint.add_url_rule(path, f"{role}_{view.__name__}", view, methods=methods)


_client_routes("agent")
_client_routes("gateway")


# -- tunnels ---------------------------------------------------------------------------------------------------


def tunnel_json(tunnel) -> dict:
    return {"id": tunnel.id, "domain": tunnel.domain, "agentId": tunnel.agent.id, "target": tunnel.target,
            "enabled": tunnel.enabled, "description": tunnel.description or "", "subnet": tunnel.subnet,
            "agentIp": tunnel.agent_ip, "gatewayIps": {row.gateway.id: row.ip for row in tunnel.gateway_ips},
            "tlsMode": tunnel.tls_mode, "forceHttps": tunnel.force_https,
            "httpProxyEnabled": tunnel.http_proxy_enabled, "socksProxyEnabled": tunnel.socks_proxy_enabled,
            "createdAt": _iso(tunnel.created_at), "certificate": tunnel_certificate(tunnel)}


def tunnel_certificate(tunnel) -> dict | None:
    """The shared ACME certificate, without its key; None until one is stored, and for the other TLS modes,
    whose certificates stay on the gateways."""
    if tunnel.tls_mode != "acme":
        return None
    now = utcnow()
    cert = certificates.summary(tunnel._database_, tunnel.domain, now)
    if cert is None:
        return None
    return {"issuer": cert.issuer, "notBefore": _iso(cert.not_before), "notAfter": _iso(cert.not_after),
            "daysLeft": cert.days_left(now),
            "fingerprintSha256": cert.fingerprint_sha256, "domains": list(cert.domains),
            "lease": cert.lease and {"holder": cert.lease.holder, "expiresAt": _iso(cert.lease.expires_at)}}


_TUNNEL_FIELDS = {
    "domain": (v.domain, True), "agentId": (v.identifier, True), "target": (v.target, True),
    "enabled": (v.boolean, False), "description": (v.description, False), "tlsMode": (v.tls_mode, False),
    "forceHttps": (v.boolean, False), "httpProxyEnabled": (v.boolean, False),
    "socksProxyEnabled": (v.boolean, False),
}
_TUNNEL_COLUMNS = {"domain": "domain", "target": "target", "enabled": "enabled", "description": "description",
                   "tlsMode": "tls_mode", "forceHttps": "force_https", "httpProxyEnabled": "http_proxy_enabled",
                   "socksProxyEnabled": "socks_proxy_enabled"}


def _tunnel_columns(db: Database, values: dict, own_id: str | None = None) -> dict:
    """Database columns for validated tunnel fields, checking the agent exists and the domain is free."""
    columns = {_TUNNEL_COLUMNS[k]: val for k, val in values.items() if k != "agentId"}
    if "agentId" in values:
        columns["agent"] = db.Agent.get(id=values["agentId"])
        if columns["agent"] is None:
            raise ApiError(400, "validation_failed", "invalid request: agentId", {"agentId": "no such agent"})
    if "domain" in values:
        other = db.Tunnel.get(domain=values["domain"])
        if other is not None and other.id != own_id:
            raise ApiError(409, "duplicate", f"a tunnel for {values['domain']} already exists",
                           {"domain": "already in use"})
    return columns


@blueprint.get("/tunnels")
async def list_tunnels() -> Response:
    return _list("Tunnel", tunnel_json, lambda row: row.domain)


def create_tunnel(body: Any) -> dict:
    """Validate `body` and create a tunnel with its own subnet and an address for every gateway."""
    values = v.parse_body(body, _TUNNEL_FIELDS)
    state = current()

    def work(db: Database) -> dict:
        columns = _tunnel_columns(db, values)
        try:
            subnet, agent_ip = allocation.allocate_tunnel(db, state.pool)
        except allocation.AllocationError as exc:
            raise ApiError(409, "pool_exhausted", str(exc)) from None
        tunnel = db.Tunnel(subnet=subnet, agent_ip=agent_ip, **columns)
        allocation.assign_gateway_addresses(db, [tunnel], db.Gateway.select())
        tunnel.flush()
        return tunnel_json(tunnel)

    return _mutate(state, work)


def update_tunnel(item_id: str, body: Any) -> dict:
    values = v.parse_body(body, _TUNNEL_FIELDS, partial=True)

    def work(db: Database) -> dict:
        tunnel = get_row(db, "Tunnel", item_id)
        columns = _tunnel_columns(db, values, item_id)
        if columns.get("domain", tunnel.domain) != tunnel.domain:
            certificates.forget(db, tunnel.domain)
        tunnel.set(**columns)
        return tunnel_json(tunnel)

    return _mutate(current(), work)


def delete_tunnel(item_id: str) -> None:
    def work(db: Database) -> None:
        get_row(db, "Tunnel", item_id).delete()  # its certificate goes with it (Tunnel.before_delete)

    _mutate(current(), work)


@blueprint.post("/tunnels")
async def post_tunnel() -> Response:
    return json_response(create_tunnel(await _body()), 201)


@blueprint.get("/tunnels/<item_id>")
async def get_tunnel(item_id: str) -> Response:
    with db_session:
        return json_response(tunnel_json(get_row(current().db, "Tunnel", item_id)))


@blueprint.patch("/tunnels/<item_id>")
async def patch_tunnel(item_id: str) -> Response:
    return json_response(update_tunnel(item_id, await _body()))


@blueprint.delete("/tunnels/<item_id>")
async def remove_tunnel(item_id: str) -> Response:
    delete_tunnel(item_id)
    return Response(status=204)
