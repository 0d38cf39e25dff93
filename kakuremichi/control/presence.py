"""Whether each agent and gateway is online, offline or stopped, as every control sharing the database sees it.

A session marks its client online when it authenticates and every half heartbeat after; offline when it ends
(stopped too, for an agent that said it was stopping). A control instance that dies says nothing, so every
instance also marks offline the clients nobody has heard from for two heartbeats, and picks up the config
changes the others committed.
"""

from __future__ import annotations

from datetime import timedelta

import trio
from pony.orm import Database, db_session

from kakuremichi.control import configs
from kakuremichi.control.models import bump_config_version, get_setting, utcnow
from kakuremichi.control.state import ControlState


def client_row(db: Database, role: str, client_id: str):
    """The agent's or gateway's database row (inside a db_session), None once deleted."""
    entity = db.Gateway if role == "gateway" else db.Agent
    return entity.get(id=client_id)


def mark_online(row) -> bool:
    """Online now; an agent marked stopped is served again. Whether that changes configs (it was stopped)."""
    stopped = bool((row.metadata or {}).get(configs.STOPPED))
    if stopped:
        row.metadata = {k: v for k, v in row.metadata.items() if k != configs.STOPPED}
    row.set(status="online", last_seen_at=utcnow())
    return stopped


@db_session
def touch(db: Database, role: str, client_id: str) -> None:
    """Heard from just now (a live session's heartbeat)."""
    row = client_row(db, role, client_id)
    if row is not None:
        row.set(status="online", last_seen_at=utcnow())


def went_offline(state: ControlState, role: str, client_id: str, stopping: bool) -> None:
    """Its session ended. An agent that said it was stopping is also marked stopped in its gateways' configs,
    whose requests for it then get a 502 at once (one that just lost control keeps being served: the data
    plane does not depend on control)."""
    if state.write(_mark_offline, role, client_id, stopping and role == "agent"):
        state.changed(agents=())  # a stopped agent is marked so in the gateways' configs only


def _mark_offline(db: Database, role: str, client_id: str, stopped: bool) -> bool:
    row = client_row(db, role, client_id)
    if row is None:
        return False
    if stopped:
        row.metadata = {**(row.metadata or {}), configs.STOPPED: True}
        bump_config_version(db)
    row.set(status="offline", last_seen_at=utcnow())
    return stopped


async def watch_database(state: ControlState) -> None:
    """Notice changes committed by other control instances sharing the database, and push them too; and, once a
    heartbeat, mark offline the clients nobody hears from any more (their instance died without saying so)."""
    with db_session:
        seen = get_setting(state.db, "config_version")
    next_sweep = trio.current_time() + state.settings.heartbeat_interval
    while True:
        await trio.sleep(state.settings.change_poll_interval)
        with db_session:
            version = get_setting(state.db, "config_version")
        if version != seen:
            seen = version
            state.changed()
        if trio.current_time() >= next_sweep:
            next_sweep = trio.current_time() + state.settings.heartbeat_interval
            if mark_stale_offline(state):
                state.status_changed()


def mark_stale_offline(state: ControlState) -> int:
    """Clients not heard from within two heartbeats are offline: a crashed control instance left them online,
    and a live session refreshes its client's `last_seen_at` every half heartbeat. How many were."""
    cutoff = utcnow() - timedelta(seconds=2 * state.settings.heartbeat_interval)
    return state.write(_mark_stale_offline, cutoff)


def _mark_stale_offline(db: Database, cutoff) -> int:
    stale = 0
    for entity in (db.Agent, db.Gateway):
        for row in entity.select(lambda r: r.status == "online"):
            if row.last_seen_at is None or row.last_seen_at < cutoff:
                row.status = "offline"
                stale += 1
    return stale
