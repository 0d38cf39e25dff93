"""Login grants (issue 16, "beyond the peers"): a tcp/udp tunnel whose access names a login tunnel
(`loginTunnelId`, an http tunnel of mode password or sso) admits a client address for `loginGrantMinutes`
after a login from it on that http tunnel, at any gateway (which reports it: protocol.AccessGranted).

Grants are rows of access_grants, one per (tcp/udp tunnel, address), pushed to every gateway with the port
routes, only unexpired ones; expired rows are purged at each new grant. Revoking every session of the http
tunnel drops the grants it gave. A tunnel pushes at most MAX_PUSHED grants, those that end last.
"""

from __future__ import annotations

import datetime
from typing import Any

from pony.orm import Database

from kakuremichi.control import bodies
from kakuremichi.control.models import bump_config_version, utcnow

LOGIN_MODES = ("password", "sso")
MAX_PUSHED = 4096  # grants of one tunnel in a gateway's config at most: the latest to end, to keep frames small


def errors(db: Database, tunnel, access: bodies.Access) -> dict[str, str]:
    """What is wrong with `access`'s login tunnel for `tunnel` (field → message)."""
    if access.login_tunnel_id is None:
        return {}
    if tunnel.port is None:
        return {"access.loginTunnelId": "only for a tcp or udp tunnel (it names the http tunnel whose logins "
                                        "open the port)"}
    login = db.Tunnel.get(id=access.login_tunnel_id) if bodies.is_identifier(access.login_tunnel_id) else None
    if login is None or login.port is not None:
        return {"access.loginTunnelId": f"{access.login_tunnel_id!r} is not the id of an http tunnel"}
    if not _has_login(login):
        return {"access.loginTunnelId": f"tunnel {login.id} has access mode {_mode(login)}: give it mode password "
                                        f"or sso, so that visitors log in there"}
    return {}


def _mode(tunnel) -> str:
    return tunnel.access.settings.get("mode", "public") if tunnel.access is not None else "public"


def _has_login(tunnel) -> bool:
    return tunnel.port is None and _mode(tunnel) in LOGIN_MODES


def login_tunnels(db: Database) -> list[dict[str, str]]:
    """The http tunnels of mode password or sso: {id, domain}, by domain."""
    return [{"id": t.id, "domain": t.domain} for t in db.Tunnel.select().order_by(lambda t: t.domain)
            if _has_login(t)]


def record(db: Database, login_tunnel_id: str, address: str, now: datetime.datetime) -> int:
    """A visitor logged in on `login_tunnel_id` from `address`: grant it on every tunnel naming that one, and
    purge the expired grants. How many tunnels it opened (configs change, their version advanced, only then)."""
    db.AccessGrant.select(lambda g: g.expires_at <= now).delete(bulk=True)
    opened = 0
    for row in db.TunnelAccess.select():
        settings = row.settings
        if settings.get("login_tunnel_id") != login_tunnel_id:
            continue
        until = now + datetime.timedelta(minutes=int(settings.get("login_grant_minutes", 60)))
        grant = db.AccessGrant.get(tunnel=row.tunnel, address=address)
        if grant is None:
            db.AccessGrant(tunnel=row.tunnel, address=address, expires_at=until)
        else:
            grant.expires_at = until
        opened += 1
    if opened:
        bump_config_version(db)
    return opened


def drop_given_by(db: Database, login_tunnel) -> None:
    """Every grant a login on `login_tunnel` gave ends (its sessions were revoked)."""
    for row in db.TunnelAccess.select():
        if row.settings.get("login_tunnel_id") == login_tunnel.id:
            row.tunnel.access_grants.select().delete(bulk=True)


def drop(tunnel) -> None:
    """`tunnel`'s grants end (its login tunnel changed)."""
    tunnel.access_grants.select().delete(bulk=True)


def current(tunnel, now: datetime.datetime) -> list[Any]:
    """The unexpired grants of `tunnel`, by address."""
    return sorted((g for g in tunnel.access_grants if g.expires_at > now), key=lambda g: g.address)


def pushed(tunnel, now: datetime.datetime) -> dict[str, float]:
    """What its gateways get: address → Unix time the grant ends (none without a login tunnel)."""
    if tunnel.access is None or not tunnel.access.settings.get("login_tunnel_id"):
        return {}
    latest = sorted(current(tunnel, now), key=lambda g: g.expires_at, reverse=True)[:MAX_PUSHED]
    return {g.address: g.expires_at.replace(tzinfo=datetime.timezone.utc).timestamp() for g in latest}


def listed(tunnel) -> list[bodies.AccessGrant]:
    return [bodies.AccessGrant(address=g.address, expires_at=g.expires_at.replace(tzinfo=datetime.timezone.utc))
            for g in current(tunnel, utcnow())]
