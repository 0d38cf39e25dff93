"""Tunnel access policies on control: stored (TunnelAccess, ShareLink), shown without their secrets, turned
into the AccessConfig every gateway enforces, and the share links signed with the deployment's access key.

The access key is derived from the secrets key (HKDF), so every control sharing a database signs alike and no
new secret has to be kept; it reaches the gateways in their config, over their authenticated WebSocket only.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
from dataclasses import dataclass

import msgspec

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from pony.orm import Database

from kakuremichi import protocol
from kakuremichi.access import tokens
from kakuremichi.access.passwords import hash_password
from kakuremichi.access.policy import secret_digest
from kakuremichi.access.tokens import Claims
from kakuremichi.control import bodies, grants
from kakuremichi.control.bodies import ApiError
from kakuremichi.control.models import new_id, utcnow

_SETTINGS = ("mode", "allowed_emails", "allowed_domains", "allowed_groups", "rules", "bypass_paths",
             "session_hours", "max_connections_per_source", "login_tunnel_id", "login_grant_minutes")


@dataclass(frozen=True)
class Deployment:
    """What every gateway config carries for access control: the signing key, and where SSO logins start."""

    key: bytes
    login_url: str = ""


def derive_key(secrets_key: bytes) -> bytes:
    return HKDF(hashes.SHA256(), 32, salt=None, info=b"kakuremichi access sessions").derive(secrets_key)


def _epoch_seconds(value: datetime.datetime) -> float:
    return value.replace(tzinfo=datetime.timezone.utc).timestamp()


def _utc(value: datetime.datetime) -> datetime.datetime:
    return value.replace(tzinfo=datetime.timezone.utc)


def view(tunnel) -> bodies.AccessView:
    row = tunnel.access
    if row is None:
        return bodies.AccessView()
    settings = {name: row.settings[name] for name in _SETTINGS if name in row.settings}
    settings["rules"] = [bodies.AccessRule(**rule) for rule in settings.get("rules", [])]
    return bodies.AccessView(**settings, password_set=bool(row.password_hash),
                             bypass_secret_set=bool(row.bypass_secret_digest), grants=grants.listed(tunnel))


def store(db: Database, tunnel, access: bodies.Access | None) -> None:
    """Replace the tunnel's policy with `access` (None: public); a password or secret left out is kept."""
    row = tunnel.access
    if access is None:
        grants.drop(tunnel)
        if row is not None:
            row.delete()
        return
    errors = {}
    for index, rule in enumerate(access.rules):
        try:
            ipaddress.ip_network(rule.cidr, strict=False)
        except ValueError:
            errors[f"access.rules[{index}].cidr"] = f"{rule.cidr!r} is not a CIDR such as 192.0.2.0/24"
    password_hash = row.password_hash if row is not None else None
    if access.password is not bodies.UNSET:
        password_hash = hash_password(access.password)
    if access.mode == "password" and not password_hash:
        errors["access.password"] = "required for mode password (8 to 1024 characters)"
    errors.update(grants.errors(db, tunnel, access))
    if errors:
        raise ApiError(400, "validation_failed", "invalid request: " + ", ".join(sorted(errors)), errors)
    digest = row.bypass_secret_digest if row is not None else None
    if access.bypass_secret is not bodies.UNSET:
        digest = None if access.bypass_secret is None else secret_digest(access.bypass_secret)
    settings = {name: getattr(access, name) for name in _SETTINGS}
    settings["rules"] = [{"action": rule.action, "cidr": str(ipaddress.ip_network(rule.cidr, strict=False))}
                         for rule in access.rules]
    for name in ("allowed_emails", "allowed_domains"):
        settings[name] = sorted({item.strip().lower() for item in settings[name] if item.strip()})
    if row is None or row.settings.get("login_tunnel_id") != access.login_tunnel_id:
        grants.drop(tunnel)
    if row is None:
        db.TunnelAccess(tunnel=tunnel, settings=settings, password_hash=password_hash, bypass_secret_digest=digest)
    else:
        row.set(settings=settings, password_hash=password_hash, bypass_secret_digest=digest)


def route_config(tunnel, deployment: Deployment | None, now: datetime.datetime
                 ) -> protocol.AccessConfig | msgspec.UnsetType:
    """What the gateways enforce for `tunnel`: nothing (UNSET, left out of the frame) for a public tunnel without
    rules."""
    row = tunnel.access
    if row is None or (row.settings.get("mode", "public") == "public" and not row.settings.get("rules")):
        return msgspec.UNSET
    settings = row.settings
    revoked = sorted(link.id for link in tunnel.share_links if link.revoked_at is not None and link.expires_at > now)
    return protocol.AccessConfig(
        mode=settings["mode"], password_hash=row.password_hash or "",
        rules=[protocol.AccessRule(rule["action"], protocol.IpNetwork(rule["cidr"])) for rule in settings["rules"]],
        bypass_paths=list(settings.get("bypass_paths", [])), bypass_secret_digest=row.bypass_secret_digest or "",
        allowed_emails=list(settings.get("allowed_emails", [])), allowed_domains=list(settings.get("allowed_domains", [])),
        allowed_groups=list(settings.get("allowed_groups", [])), epoch=row.epoch,
        revoked_before=_epoch_seconds(row.revoked_before) if row.revoked_before else 0.0, revoked_links=revoked,
        revoked_users=dict(settings.get("revoked_users", {})),
        session_lifetime=int(settings.get("session_hours", 24)) * 3600,
        login_url=deployment.login_url if deployment else "")


def encoded_key(deployment: Deployment | None) -> str | msgspec.UnsetType:
    return base64.urlsafe_b64encode(deployment.key).decode() if deployment else msgspec.UNSET


def _policy_row(db: Database, tunnel):
    public = bodies.Access()
    return tunnel.access or db.TunnelAccess(tunnel=tunnel, settings={name: getattr(public, name) for name in _SETTINGS})


def revoke_sessions(db: Database, tunnel, email: str | None = None) -> None:
    """Every session of the tunnel ends (its gateways refuse the older epoch), or those of the user `email`."""
    row = _policy_row(db, tunnel)
    if email is None:
        row.epoch += 1
        row.revoked_before = utcnow()
        grants.drop_given_by(db, tunnel)
        return
    revoked = dict(row.settings.get("revoked_users", {}))
    revoked[email.strip().lower()] = _epoch_seconds(utcnow())
    row.settings = {**row.settings, "revoked_users": revoked}


def link_json(link) -> bodies.ShareLink:
    return bodies.ShareLink(id=link.id, note=link.note or "", created_at=_utc(link.created_at),
                            expires_at=_utc(link.expires_at), revoked=link.revoked_at is not None)


def create_link(db: Database, tunnel, body: bodies.ShareLinkCreate, key: bytes) -> dict:
    now = utcnow()
    link = db.ShareLink(id=new_id(), tunnel=tunnel, note=body.note, created_at=now,
                        expires_at=now + datetime.timedelta(hours=body.expires_in_hours))
    token = tokens.sign(key, "share", Claims(tunnel=tunnel.id, expires=_epoch_seconds(link.expires_at),
                                             issued=_epoch_seconds(now), id=link.id))
    scheme = "http" if tunnel.tls_mode == "off" else "https"
    return bodies.as_json(bodies.ShareLinkWithUrl(**msgspec.structs.asdict(link_json(link)),
                                                  url=f"{scheme}://{tunnel.domain}/.kakuremichi/share/{token}"))


def links(tunnel) -> dict:
    return bodies.as_json(bodies.ShareLinks(items=[link_json(link) for link in
                                                   tunnel.share_links.order_by(lambda l: l.created_at)]))


def revoke_link(db: Database, tunnel, link_id: str) -> None:
    link = db.ShareLink.get(id=link_id) if bodies.is_identifier(link_id) else None
    if link is None or link.tunnel != tunnel:
        raise ApiError(404, "not_found", f"no share link with id {link_id} on this tunnel")
    if link.revoked_at is None:
        link.revoked_at = utcnow()
