"""The gate in front of a protected tunnel: for each request, forward it (identity headers set) or answer it
here (login page, share link redemption, 403), from the route's AccessPolicy, the request's parts and the time.

The gateway's own paths live under `/.kakuremichi/` on the tunnel's domain: `login` (the password form's
POST), `share/<token>` (a share link), `sso?code=` (back from the SSO login on control), `logout`. A session is
the `kakuremichi_session` cookie, host-only (so scoped to the tunnel's domain), HttpOnly, SameSite=Lax, and
Secure over HTTPS; the token inside is bound to the tunnel besides. X-Kakuremichi-* headers from the client
are always dropped, and set again only from a session the gate accepted.
"""

from __future__ import annotations

import base64
import binascii
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import parse_qs, quote, urlsplit

from kakuremichi.access import pages, tokens
from kakuremichi.access.passwords import verify_password
from kakuremichi.access.policy import AccessPolicy
from kakuremichi.access.throttle import Throttle
from kakuremichi.access.tokens import Claims

Headers = list[tuple[bytes, bytes]]
COOKIE = "kakuremichi_session"
PREFIX = b"/.kakuremichi/"
LOGIN, SHARE, SSO, LOGOUT = PREFIX + b"login", PREFIX + b"share/", PREFIX + b"sso", PREFIX + b"logout"
IDENTITY = (b"x-kakuremichi-user", b"x-kakuremichi-email", b"x-kakuremichi-groups")
BYPASS_HEADER = b"x-kakuremichi-bypass"
MAX_FORM = 8192  # bytes of a login form's body the gate reads
LOGGED_IN = frozenset({"access_password_ok", "access_share_ok", "access_sso_ok"})  # a session was issued


@dataclass(frozen=True)
class Forward:
    """Send the request on with these headers (the client's, identity fields replaced)."""

    headers: Headers


@dataclass(frozen=True)
class Reply:
    """Answer here; `code` names the outcome for the access log (never the secret that was tried)."""

    status: int
    code: str
    body: bytes = b""
    headers: Headers = field(default_factory=list)
    json: bool = False  # the body is JSON (API clients), else HTML


def strip_identity(headers: Iterable[tuple[bytes, bytes]]) -> Headers:
    """The client's headers without the X-Kakuremichi-* fields only the gate may set, nor our cookie."""
    out: Headers = []
    for name, value in headers:
        if name.startswith(b"x-kakuremichi-"):
            continue
        if name == b"cookie" and COOKIE.encode() in value:
            value = b"; ".join(part for part in (p.strip() for p in value.split(b";"))
                               if part and not part.startswith(COOKIE.encode() + b"="))
            if not value:
                continue
        out.append((name, value))
    return out


class Gate:
    """Decisions for every protected tunnel of one gateway process, with its brute-force counters and the
    SSO codes already redeemed here (a code is good once)."""

    def __init__(self, throttle: Throttle | None = None, clock=time.time) -> None:
        self.throttle = throttle or Throttle()
        self.clock = clock
        self._redeemed: dict[str, float] = {}  # SSO code id → its expiry

    def wants_body(self, policy: AccessPolicy | None, method: bytes, target: bytes) -> bool:
        """Whether the gate must read this request's body first (a password form)."""
        return (policy is not None and policy.mode == "password" and method == b"POST"
                and target.split(b"?", 1)[0] == LOGIN)

    def check(self, policy: AccessPolicy | None, *, method: bytes, target: bytes, headers: Headers,
              client_ip: str, host: str, scheme: str, body: bytes = b"") -> Forward | Reply:
        if policy is None:  # public, no rules: what most requests take, so only the identity fields are looked for
            if any(name.startswith(b"x-kakuremichi-") for name, _ in headers):
                headers = [(name, value) for name, value in headers if not name.startswith(b"x-kakuremichi-")]
            return Forward(headers)
        now = self.clock()
        action = policy.rule_for(client_ip)
        if action == "deny":
            return _forbidden("access_denied_rule", "Your address may not open this site.")
        if action == "bypass" or policy.mode == "public":
            return Forward(strip_identity(headers))
        path = target.split(b"?", 1)[0]
        if path.startswith(PREFIX):
            return self._own_path(policy, method, target, path, headers, client_ip, host, scheme, body, now)
        if policy.bypassed_path(target) or policy.bypassed_secret(_presented_secret(headers)):
            return Forward(strip_identity(headers))
        claims = tokens.verify(policy.key, "session", _cookie(headers), now)
        if claims is not None and policy.admits(claims):
            return Forward(strip_identity(headers) + _identity(claims))
        if claims is not None and policy.mode == "sso" and policy.current(claims) and claims.email:
            return _forbidden("access_denied_user", f"{claims.email or 'This account'} may not open this site.")
        return self._login_needed(policy, method, target, headers, host, scheme)

    # -- the gateway's own paths ----------------------------------------------------------------------------

    def _own_path(self, policy: AccessPolicy, method: bytes, target: bytes, path: bytes, headers: Headers,
                  client_ip: str, host: str, scheme: str, body: bytes, now: float) -> Reply:
        if path == LOGIN and method == b"POST" and policy.mode == "password":
            return self._password(policy, body, client_ip, host, scheme, now)
        if path.startswith(SHARE):
            return self._share(policy, path[len(SHARE):], client_ip, scheme, now)
        if path == SSO and policy.mode == "sso":
            return self._sso_return(policy, target, client_ip, scheme, now)
        if path == LOGOUT:
            return _redirect("/", "access_logout", _set_cookie("", 0, scheme))
        return Reply(404, "access_unknown_path", pages.refused("Not found", "No such page."))

    def _password(self, policy: AccessPolicy, body: bytes, client_ip: str, host: str, scheme: str,
                  now: float) -> Reply:
        form = _fields(body.decode("utf-8", "replace"))
        next_path = _local(form.get("next", ["/"])[0])
        if not self.throttle.allows(client_ip, policy.tunnel_id, now):
            return _throttled()
        password = form.get("password", [""])[0]
        if not policy.password_hash or not verify_password(password, policy.password_hash):
            self.throttle.failed(client_ip, policy.tunnel_id, now)
            return Reply(401, "access_password_wrong", pages.login(host, next_path, "Wrong password."),
                         [(b"cache-control", b"no-store")])
        claims = Claims(tunnel=policy.tunnel_id, expires=now + policy.session_lifetime, issued=now,
                        id=tokens.new_id(), epoch=policy.epoch, user="password")
        return _session_redirect(policy, claims, next_path, scheme, "access_password_ok", now)

    def _share(self, policy: AccessPolicy, token: bytes, client_ip: str, scheme: str, now: float) -> Reply:
        if not self.throttle.allows(client_ip, policy.tunnel_id, now):
            return _throttled()
        link = tokens.verify(policy.key, "share", token, now)
        if link is None or link.tunnel != policy.tunnel_id or link.id in policy.revoked_links:
            self.throttle.failed(client_ip, policy.tunnel_id, now)
            return _forbidden("access_share_refused", "This share link is not valid: it expired, was revoked, "
                                                      "or belongs to another site. Ask for a new one.")
        claims = Claims(tunnel=policy.tunnel_id, expires=min(link.expires, now + policy.session_lifetime),
                        issued=now, id=tokens.new_id(), epoch=policy.epoch, user=f"share:{link.id}", link=link.id)
        return _session_redirect(policy, claims, "/", scheme, "access_share_ok", now)

    def _sso_return(self, policy: AccessPolicy, target: bytes, client_ip: str, scheme: str, now: float) -> Reply:
        query = _fields(urlsplit(target.decode("latin-1")).query)
        code = tokens.verify(policy.key, "code", query.get("code", [""])[0], now)
        self._redeemed = {key: until for key, until in self._redeemed.items() if until > now}
        if code is None or code.tunnel != policy.tunnel_id or code.id in self._redeemed:
            self.throttle.failed(client_ip, policy.tunnel_id, now)
            return _forbidden("access_code_refused", "This login link is not valid any more. Log in again.")
        self._redeemed[code.id] = code.expires
        claims = Claims(tunnel=policy.tunnel_id, expires=now + policy.session_lifetime, issued=now,
                        id=tokens.new_id(), epoch=policy.epoch, user=code.user, email=code.email,
                        groups=code.groups)
        if not policy.allows_user(claims.email, claims.groups):
            return _forbidden("access_denied_user", f"{claims.email or 'This account'} may not open this site.")
        return _session_redirect(policy, claims, _local(query.get("next", ["/"])[0]), scheme, "access_sso_ok", now)

    def _login_needed(self, policy: AccessPolicy, method: bytes, target: bytes, headers: Headers, host: str,
                      scheme: str) -> Reply:
        browser = method in (b"GET", b"HEAD") and b"text/html" in b",".join(v for n, v in headers if n == b"accept")
        if policy.mode == "sso" and browser and policy.login_url:
            back = f"{scheme}://{host}{_local(target.decode('latin-1'))}"
            location = f"{policy.login_url}?tunnel={quote(policy.tunnel_id)}&next={quote(back, safe='')}"
            return _redirect(location, "access_login_redirect")
        if policy.mode == "sso" and browser:
            return Reply(503, "access_sso_unconfigured", pages.refused(
                "Login unavailable", "This site uses single sign-on, which control does not offer yet: its operator "
                "must start control with --oidc-providers-file and --public-url."))
        if policy.mode == "password" and browser:
            return Reply(401, "access_login_required", pages.login(host, _local(target.decode("latin-1"))),
                         [(b"cache-control", b"no-store")])
        return Reply(401, "access_login_required",
                     b'{"error":"Login required","code":"access_login_required",'
                     b'"details":"This site is protected: open it in a browser to log in."}', json=True)


def _session_redirect(policy: AccessPolicy, claims: Claims, next_path: str, scheme: str, code: str,
                      now: float) -> Reply:
    token = tokens.sign(policy.key, "session", claims)
    return _redirect(next_path, code, _set_cookie(token, int(claims.expires - now), scheme))


def _set_cookie(token: str, max_age: int, scheme: str) -> tuple[bytes, bytes]:
    secure = "; Secure" if scheme == "https" else ""
    return b"set-cookie", f"{COOKIE}={token}; Path=/; Max-Age={max_age}; HttpOnly; SameSite=Lax{secure}".encode()


def _redirect(location: str, code: str, *extra: tuple[bytes, bytes]) -> Reply:
    return Reply(303, code, b"", [(b"location", location.encode("latin-1", "replace")),
                                  (b"cache-control", b"no-store"), *extra])


def _forbidden(code: str, details: str) -> Reply:
    return Reply(403, code, pages.refused("Access denied", details), [(b"cache-control", b"no-store")])


def _throttled() -> Reply:
    return Reply(429, "access_throttled", pages.refused("Too many attempts", "Wait a few minutes and try again."),
                 [(b"retry-after", b"300"), (b"cache-control", b"no-store")])


def _fields(text: str) -> dict[str, list[str]]:
    """A form's or query's fields; past a handful of fields nothing is taken (none of ours has more)."""
    try:
        return parse_qs(text, max_num_fields=8)
    except ValueError:
        return {}


def _local(path: str) -> str:
    """`path` if it is a path on this site, else "/": a login never sends the visitor elsewhere."""
    if not path.startswith("/") or path.startswith("//") or "\\" in path or any(ord(c) < 0x21 for c in path):
        return "/"
    return path


def _cookie(headers: Headers) -> bytes:
    prefix = COOKIE.encode() + b"="
    for name, value in headers:
        if name == b"cookie":
            for part in value.split(b";"):
                part = part.strip()
                if part.startswith(prefix):
                    return part[len(prefix):]
    return b""


def _presented_secret(headers: Headers) -> str:
    """The bypass secret a native app sends: X-Kakuremichi-Bypass, or the password of Basic credentials."""
    for name, value in headers:
        if name == BYPASS_HEADER:
            return value.decode("latin-1")
        if name == b"authorization" and value[:6].lower() == b"basic ":
            try:
                return base64.b64decode(value[6:].strip(), validate=True).decode("utf-8").partition(":")[2]
            except (binascii.Error, UnicodeDecodeError):
                return ""
    return ""


def _identity(claims: Claims) -> Headers:
    def clean(text: str) -> bytes:
        return text.encode("utf-8", "replace").translate(None, b"\r\n\0")

    out = [(IDENTITY[0], clean(claims.user))]
    if claims.email:
        out.append((IDENTITY[1], clean(claims.email)))
    if claims.groups:
        out.append((IDENTITY[2], clean(",".join(claims.groups))))
    return out
