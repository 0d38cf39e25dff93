"""Single sign-on for tunnels in `sso` mode, on control's origin: /auth/login sends the visitor to an OpenID
Connect provider (oidc.py), /auth/callback checks who came back and returns them to the tunnel's domain with a
one-time code (60 s, good once) that the gateway there exchanges for its own session cookie. The login under
way is kept in a signed cookie on control's origin, so any control instance can finish it."""

from __future__ import annotations

import hmac
import html
import logging
import time
from urllib.parse import urlencode, urlsplit

import httpx
import msgspec
from pony.orm import db_session
from quart import Blueprint, redirect, request
from quart_trio.wrappers.response import TrioResponse as Response

from kakuremichi.access import pages, tokens
from kakuremichi.access.policy import AccessPolicy
from kakuremichi.access.tokens import Claims
from kakuremichi.control import oidc
from kakuremichi.control.state import current
from kakuremichi.logs import log

logger = logging.getLogger("kakuremichi.control.sso")
blueprint = Blueprint("sso", __name__, url_prefix="/auth")
ATTEMPT_COOKIE = "kakuremichi_oidc"
ATTEMPT_LIFETIME = 600  # seconds a visitor has to log in at the provider
CODE_LIFETIME = 60  # seconds the one-time code is good for on the tunnel's domain


class _Attempt(msgspec.Struct, frozen=True):
    provider: str
    state: str
    nonce: str
    verifier: str
    tunnel: str
    next: str
    expires: float


def _page(status: int, title: str, details: str) -> Response:
    return Response(pages.refused(title, details), status=status, content_type="text/html; charset=utf-8",
                    headers={"cache-control": "no-store"})


def _redirect_uri() -> str:
    return current().settings.public_url.rstrip("/") + "/auth/callback"


def _tunnel_policy(tunnel_id: str) -> tuple[str, AccessPolicy] | None:
    """The domain and the SSO policy of a tunnel in sso mode, as its gateways hold it."""
    state = current()
    with db_session:
        tunnel = state.db.Tunnel.get(id=tunnel_id) if tunnel_id.isalnum() else None
        if tunnel is None or tunnel.access is None or tunnel.access.settings.get("mode") != "sso":
            return None
        settings = tunnel.access.settings
        return tunnel.domain, AccessPolicy(tunnel.id, mode="sso", allowed_emails=frozenset(settings["allowed_emails"]),
                                           allowed_domains=frozenset(settings["allowed_domains"]),
                                           allowed_groups=frozenset(settings["allowed_groups"]))


def _on_domain(url: str, domain: str) -> bool:
    """Whether `url` is an http(s) URL on the tunnel's domain (a wildcard's one level below): the code goes
    nowhere else."""
    try:
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        parts.port  # noqa: B018  (raises on a port that is not a number)
    except ValueError:
        return False
    if parts.scheme not in ("http", "https") or not host:
        return False
    if domain.startswith("*."):
        return host.endswith(domain[1:]) and "." not in host[: -len(domain) + 1]
    return host == domain


@blueprint.get("/login")
async def login() -> Response:
    state = current()
    tunnel_id, next_url = request.args.get("tunnel", ""), request.args.get("next", "")
    found = _tunnel_policy(tunnel_id)
    if found is None or not _on_domain(next_url, found[0]):
        return _page(400, "Cannot log in here", "This login link does not belong to a tunnel protected by single "
                                                 "sign-on. Open the site again.")
    providers = {provider.name: provider for provider in state.oidc}
    chosen = request.args.get("provider") or (next(iter(providers)) if len(providers) == 1 else "")
    if chosen not in providers:
        links = "".join(f"<li><a href='?{html.escape(urlencode({'tunnel': tunnel_id, 'next': next_url, 'provider': name}))}'>"
                        f"{html.escape(name)}</a>" for name in providers)
        return Response(pages.page("Log in with", f"<ul>{links}</ul>"), content_type="text/html; charset=utf-8")
    attempt = oidc.Attempt.new(chosen)
    try:
        async with httpx.AsyncClient(timeout=10) as client:
            url = await oidc.authorization_url(providers[chosen], client, attempt, _redirect_uri())
    except oidc.LoginFailed as exc:
        log(logger, logging.WARNING, "SSO provider unusable", provider=chosen, error=str(exc))
        return _page(502, "The login provider is unavailable", "Try again in a moment.")
    kept = _Attempt(chosen, attempt.state, attempt.nonce, attempt.verifier, tunnel_id, next_url,
                    time.time() + ATTEMPT_LIFETIME)
    response = redirect(url, 303)
    response.set_cookie(ATTEMPT_COOKIE, tokens.seal(state.access.key, "login", msgspec.json.encode(kept)),
                        max_age=ATTEMPT_LIFETIME, path="/auth", httponly=True, samesite="Lax",
                        secure=state.settings.public_url.startswith("https://"))
    return response


@blueprint.get("/callback")
async def callback() -> Response:
    state = current()
    data = tokens.unseal(state.access.key, "login", request.cookies.get(ATTEMPT_COOKIE, ""))
    try:
        attempt = msgspec.json.decode(data, type=_Attempt) if data is not None else None
    except msgspec.DecodeError:
        attempt = None
    if attempt is None or attempt.expires < time.time() or not hmac.compare_digest(
            attempt.state, request.args.get("state", "")):
        return _page(400, "Login expired", "This login took too long or was started elsewhere. Open the site again.")
    providers = {provider.name: provider for provider in state.oidc}
    found = _tunnel_policy(attempt.tunnel)
    if attempt.provider not in providers or found is None or "code" not in request.args:
        return _page(400, "Login failed", request.args.get("error_description") or "The provider sent no code.")
    domain, policy = found
    try:
        async with httpx.AsyncClient(timeout=10) as client:
            user = await oidc.redeem(providers[attempt.provider], client, oidc.Attempt(
                attempt.provider, attempt.state, attempt.nonce, attempt.verifier), request.args["code"],
                _redirect_uri())
    except oidc.LoginFailed as exc:
        log(logger, logging.WARNING, "SSO login failed", provider=attempt.provider, error=str(exc))
        return _page(403, "Login failed", str(exc))
    if not policy.allows_user(user.email, user.groups):
        log(logger, logging.INFO, "SSO user not allowed", tunnel=attempt.tunnel, email=user.email)
        return _page(403, "Access denied", f"{user.email or 'This account'} may not open {domain}.")
    now = time.time()
    code = tokens.sign(state.access.key, "code", Claims(tunnel=attempt.tunnel, expires=now + CODE_LIFETIME,
                                                        issued=now, id=tokens.new_id(), user=user.subject,
                                                        email=user.email, groups=user.groups))
    back = urlsplit(attempt.next)
    path = back.path + (f"?{back.query}" if back.query else "") or "/"
    response = redirect(f"{back.scheme}://{back.netloc}/.kakuremichi/sso?" + urlencode({"code": code, "next": path}),
                        303)
    response.delete_cookie(ATTEMPT_COOKIE, path="/auth")
    log(logger, logging.INFO, "SSO login", tunnel=attempt.tunnel, email=user.email, provider=attempt.provider)
    return response
