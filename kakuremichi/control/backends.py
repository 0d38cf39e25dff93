"""A tunnel's backends in the database: the API's list set on a tunnel, their JSON, the health their agents
report, and what gateways and agents are told of them (call everything inside a db_session).

The tunnel's own agent, target and agent_ip columns stay the first backend's (the one-backend shorthand of
the API and what older code reads); `agentId` + `target` given alone change that first backend.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import msgspec
from pony.orm import Database

from kakuremichi import protocol
from kakuremichi.control import allocation, bodies
from kakuremichi.control.bodies import ApiError
from kakuremichi.control.models import adopt_single_backends, utcnow

NO_CHECK = bodies.HealthCheck()
_SPEC_FIELDS = ("weight", "priority", "enabled", "draining")


def ordered(tunnel) -> list:
    return sorted(tunnel.backends, key=lambda b: (b.position, b.id))


def serving(tunnel) -> list:
    """The tunnel's backends in order; a tunnel without rows (an older control stored it since this one started)
    has its agent and target at its agent address as its one backend, until the next start adopts it as a row."""
    return ordered(tunnel) or [SimpleNamespace(
        id=tunnel.id, tunnel=tunnel, agent=tunnel.agent, target=tunnel.target, address=tunnel.agent_ip, weight=1,
        priority=0, enabled=True, draining=False, health="unknown", health_error=None, health_checked_at=None,
        health_check=None)]


def agent_ids(tunnel) -> set[str]:
    """The agents serving `tunnel` (none if it is gone): those whose configs a change of it alters."""
    return set() if tunnel is None else {tunnel.agent.id} | {backend.agent.id for backend in serving(tunnel)}


def shorthand(values: dict) -> bool:
    """Whether a tunnel body gives the one-backend shorthand (agentId, target); refuses it beside `backends`."""
    given = [name for name in ("agent_id", "target") if name in values]
    if given and "backends" in values:
        raise ApiError(400, "validation_failed", "invalid request: backends",
                       {"backends": "give backends, or agentId and target, not both"})
    return bool(given)


def set_backends(db: Database, tunnel, specs: list[bodies.BackendSpec]) -> None:
    """Make the tunnel's backends `specs`, in order: those naming an existing backend's id keep its address
    (and its health, unless their agent or target changes), the others get new addresses, the rest go."""
    current = {b.id: b for b in tunnel.backends}
    ids = [spec.id for spec in specs if spec.id is not msgspec.UNSET]
    unknown = [backend_id for backend_id in ids if backend_id not in current]
    if unknown:
        raise ApiError(400, "validation_failed", "invalid request: backends",
                       {"backends": f"no backend {unknown[0]} in this tunnel (leave id out for a new one)"})
    if len(set(ids)) != len(ids):
        raise ApiError(400, "validation_failed", "invalid request: backends",
                       {"backends": "each backend id may appear once"})
    agents = {spec.agent_id: db.Agent.get(id=spec.agent_id) for spec in specs}
    missing = sorted(agent_id for agent_id, agent in agents.items() if agent is None)
    if missing:
        raise ApiError(400, "validation_failed", "invalid request: backends",
                       {"backends": f"no such agent {missing[0]}"})
    kept = set(ids)
    for backend_id, row in current.items():
        if backend_id not in kept:
            row.delete()
    for position, spec in enumerate(specs):
        row = current.get(spec.id) if spec.id is not msgspec.UNSET else None
        columns = {name: getattr(spec, name) for name in _SPEC_FIELDS}
        check = None if spec.health_check is None else msgspec.to_builtins(spec.health_check)
        if row is None:
            used = {b.address for b in tunnel.backends} | {g.ip for g in tunnel.gateway_ips}
            address = tunnel.agent_ip if position == 0 and tunnel.agent_ip not in used else None
            try:
                address = address or allocation.backend_address(tunnel.subnet, used)
            except allocation.AllocationError as exc:
                raise ApiError(409, "pool_exhausted", str(exc)) from None
            row = db.Backend(tunnel=tunnel, agent=agents[spec.agent_id], target=str(spec.target), address=address,
                             position=position, health_check=check, **columns)
            row.flush()
            continue
        if row.agent.id != spec.agent_id or row.target != spec.target:
            row.set(health="unknown", health_error=None, health_checked_at=None)
        row.set(agent=agents[spec.agent_id], target=str(spec.target), position=position, health_check=check,
                **columns)
    _follow_first(tunnel)


def set_first(tunnel, agent, target: str | None) -> None:
    """The shorthand: the first backend gets this agent and/or target."""
    adopt_single_backends(tunnel._database_)
    first = ordered(tunnel)[0]
    changes = {name: value for name, value in (("agent", agent), ("target", target)) if value is not None}
    if any(getattr(first, name) != value for name, value in changes.items()):
        first.set(health="unknown", health_error=None, health_checked_at=None, **changes)
    _follow_first(tunnel)


def _follow_first(tunnel) -> None:
    first = ordered(tunnel)[0]
    tunnel.set(agent=first.agent, target=first.target, agent_ip=first.address)


def set_balancing(db: Database, tunnel, values: dict) -> None:
    """The tunnel's healthCheck and affinity, from the body fields that set them."""
    if "health_check" not in values and "affinity" not in values:
        return
    row = tunnel.balancing or db.TunnelBalancing(tunnel=tunnel)
    if "health_check" in values:
        row.health_check = msgspec.to_builtins(values["health_check"])
    if "affinity" in values:
        row.affinity = values["affinity"]


def tunnel_check(tunnel) -> bodies.HealthCheck:
    stored = tunnel.balancing and tunnel.balancing.health_check
    return msgspec.convert(stored, bodies.HealthCheck) if stored else NO_CHECK


def affinity(tunnel) -> bool:
    return bool(tunnel.balancing and tunnel.balancing.affinity)


def effective_check(backend) -> bodies.HealthCheck:
    own = backend.health_check
    return msgspec.convert(own, bodies.HealthCheck) if own else tunnel_check(backend.tunnel)


def health(backend) -> str:
    """Its health as last reported, while it is checked: once its check is `none`, nobody reports it any more."""
    return backend.health if effective_check(backend).type != "none" else "unknown"


def _utc(value: datetime.datetime | None) -> datetime.datetime | None:
    return None if value is None else value.replace(tzinfo=datetime.timezone.utc)


def as_bodies(tunnel, connections: dict[str, int]) -> list[bodies.Backend]:
    return [bodies.Backend(
        id=b.id, agent_id=b.agent.id, target=b.target, address=b.address, weight=b.weight, priority=b.priority,
        enabled=b.enabled, draining=b.draining,
        health_check=None if not b.health_check else msgspec.convert(b.health_check, bodies.HealthCheck),
        health=bodies.BackendHealth(status=health(b), last_check=_utc(b.health_checked_at), error=b.health_error),
        active_connections=connections.get(b.id, 0)) for b in serving(tunnel)]


def active_connections(db: Database) -> dict[str, int]:
    """Backend id → connections the online gateways (and their workers) reported holding to it."""
    totals: dict[str, int] = {}
    for gateway in db.Gateway.select(lambda g: g.status == "online"):
        reported = ((gateway.metadata or {}).get("stats") or {}).get("backendConnections") or {}
        if isinstance(reported, dict):
            for backend_id, count in reported.items():
                if isinstance(count, int):
                    totals[backend_id] = totals.get(backend_id, 0) + count
    return totals


def report_health(db: Database, agent_id: str, report: protocol.BackendHealth) -> bool:
    """Store what an agent reported of one of its backends; whether its status changed (the gateways must
    then be told). A report about another agent's backend is ignored."""
    backend = db.Backend.get(id=report.backend_id)
    if backend is None or backend.agent.id != agent_id:
        return False
    changed = backend.health != report.status
    backend.set(health=report.status, health_error=report.error, health_checked_at=utcnow())
    return changed


# -- configs ---------------------------------------------------------------------------------------------------


def route_fields(tunnel, stopped: Callable[[Any], bool]) -> dict[str, Any]:
    """RouteConfig's backend fields (`stopped(agent)`: it said it was stopping); none for a tunnel with its one
    backend as before (the v1 frame)."""
    rows = serving(tunnel)
    if len(rows) == 1 and _plain(rows[0]) and not affinity(tunnel):
        return {}
    return {"affinity": affinity(tunnel), "backends": [protocol.RouteBackend(
        b.id, b.address, b.weight, b.priority, b.enabled, b.draining, health(b),
        agent_stopped=stopped(b.agent)) for b in rows]}


def _plain(backend) -> bool:
    return (backend.enabled and not backend.draining and backend.weight == 1 and backend.priority == 0
            and effective_check(backend).type == "none")


def agent_mappings(tunnel, agent) -> list[tuple[Any, dict[str, Any]]]:
    """The backends of `tunnel` that `agent` serves, each with its TunnelMapping fields beyond the tunnel's."""
    mine = [b for b in serving(tunnel) if b.agent.id == agent.id]
    result = []
    for backend in mine:
        check = effective_check(backend)
        extra: dict[str, Any] = {}
        if check.type != "none":
            extra = {"backend_id": backend.id, "health_check": msgspec.convert(msgspec.to_builtins(check),
                                                                               protocol.HealthCheck)}
        result.append((backend, extra))
    return result
