"""Tunnels an agent declares itself (its --tunnels-file, --discover docker), made by control within the domains
the admin delegated to that agent.

An agent key alone must not claim any domain, so an agent declares nothing until the admin lists domains in
its metadata, `{"delegatedDomains": ["home.example.com"]}` (web UI or `PATCH /api/agents/<id>`): it may then
declare that domain and every name under it. Under those domains the agent's declaration, sent whole each
time, is what its tunnels are: control creates, changes and deletes them to match, through the same services
as the REST API; its other tunnels, and every other agent's, are left alone. What cannot be made (outside
the delegation, another agent's domain, no subnet left) is answered domain by domain.
"""

from __future__ import annotations

import logging

import msgspec
from pony.orm import db_session

from kakuremichi import protocol
from kakuremichi.control import bodies, services
from kakuremichi.control.bodies import ApiError
from kakuremichi.control.state import ControlState
from kakuremichi.logs import log

logger = logging.getLogger("kakuremichi.control")
DELEGATION = "delegatedDomains"  # the agent metadata key naming the domains it may declare tunnels under
# what a declaration sets besides the domain: attribute (and database column) → the REST API's name
DECLARED_FIELDS = {f.name: f.encode_name for f in msgspec.structs.fields(protocol.DeclaredTunnel) if f.name != "domain"}


def delegated(domain: str, delegations: list[str]) -> bool:
    """Whether `domain` is one of `delegations` or a name under one (`*.` wildcards included)."""
    return any(domain == parent or domain.endswith("." + parent) for parent in delegations)


def reconcile(state: ControlState, agent_id: str, declared: list[protocol.DeclaredTunnel]) -> dict[str, str]:
    """Make agent `agent_id`'s tunnels under its delegated domains exactly `declared`; returns what was not
    made, domain → why."""
    with db_session:
        agent = state.db.Agent.get(id=agent_id)
        if agent is None:
            return {}
        delegations = [d for d in (agent.metadata or {}).get(DELEGATION) or [] if isinstance(d, str)]
        own = {t.domain: t for t in agent.tunnels}
        owners = {d.domain: t.agent.name for d in declared if (t := state.db.Tunnel.get(domain=d.domain))}
        current = {domain: ({name: getattr(t, name) for name in DECLARED_FIELDS}, t.id) for domain, t in own.items()}
        name = agent.name
    refused: dict[str, str] = {}
    for tunnel in declared:
        if not delegated(tunnel.domain, delegations):
            refused[tunnel.domain] = (f"not under a domain delegated to agent {name!r}: the admin lists its "
                                      f"domains in the agent's metadata as {DELEGATION}")
        elif tunnel.domain in owners and tunnel.domain not in current:
            refused[tunnel.domain] = f"a tunnel of agent {owners[tunnel.domain]!r} already serves it"
        else:
            try:
                _make(state, agent_id, tunnel, current.get(tunnel.domain))
            except ApiError as exc:
                refused[tunnel.domain] = exc.message
    wanted = {t.domain for t in declared}
    for domain, (_, tunnel_id) in current.items():
        if delegated(domain, delegations) and domain not in wanted:
            services.delete(state, "tunnel", tunnel_id)
            log(logger, logging.INFO, "declared tunnel removed", agent=name, domain=domain)
    if refused:
        log(logger, logging.WARNING, "declared tunnels refused", agent=name, refused=refused)
    return refused


def _make(state: ControlState, agent_id: str, tunnel: protocol.DeclaredTunnel,
          current: tuple[dict, str] | None) -> None:
    """Create `tunnel`, or change the existing one (`current`: its declared fields and id) where it differs."""
    wanted = {name: getattr(tunnel, name) for name in DECLARED_FIELDS}
    as_api = {DECLARED_FIELDS[name]: value for name, value in wanted.items()}
    if current is None:
        services.create(state, "tunnel", bodies.decode(bodies.TunnelCreate, {
            "domain": tunnel.domain, "agentId": agent_id, "description": "declared by its agent", **as_api}))
    elif current[0] != wanted:
        services.update(state, "tunnel", current[1], bodies.decode(bodies.TunnelUpdate, as_api))
