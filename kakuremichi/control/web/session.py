"""Who is logged in to the web UI: a signed session cookie, the admin token as the password, CSRF tokens.

The cookie is signed (HMAC-SHA256) with a secret kept 0600 in the data directory, so a leaked database
alone cannot forge a session; controls sharing a database behind one address share that file too. A
session remembers a fingerprint of the admin token it was opened with: changing the token logs everyone out.
It is also a row in the database (WebSession, by the hash of an id the cookie carries), which logging out
deletes: a copy of the cookie is worth nothing afterwards, on any control sharing the database.
"""

from __future__ import annotations

import errno
import hashlib
import hmac
import logging
import math
import secrets
from datetime import timedelta
from pathlib import Path

from pony.orm import Database, db_session
from quart import Quart, current_app, g, has_request_context, request, session
from quart.sessions import SecureCookieSessionInterface

from kakuremichi.control import auth, datadir
from kakuremichi.control.models import utcnow
from kakuremichi.control.state import current
from kakuremichi.logs import log

logger = logging.getLogger("kakuremichi.control.web")

SECRET_FILE = "web-session-secret"
LIFETIME = timedelta(hours=12)
CSRF_FIELD = "csrf_token"
SESSION_ID = "sid"
LOGIN_ATTEMPTS = 5  # wrong tokens one address may send at once, then
LOGIN_REFILL = 12.0  # one more every this many seconds
GUARD = "kakuremichi.web.logins"


class LoginGuard:
    """What stands between /login and a guesser, per source address: a throttle and a log line a minute.
    Control trusts no proxy header for the address (it has no trusted-proxy setting): the socket's peer."""

    def __init__(self) -> None:
        self.throttle = auth.Throttle(LOGIN_ATTEMPTS, LOGIN_REFILL)
        self.failures = auth.FailureLog(logger, "web login refused", burst=1)


class LoginThrottled(Exception):
    """Too many wrong tokens from this address: try again after `retry_after` seconds."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"retry after {retry_after} s")
        self.retry_after = retry_after


class SessionInterface(SecureCookieSessionInterface):
    """Quart's signed cookie with SHA-256, HttpOnly, SameSite=Lax, and Secure whenever the page came over https."""

    digest_method = staticmethod(hashlib.sha256)

    def get_cookie_secure(self, app: Quart) -> bool:
        return has_request_context() and (request.scheme == "https"
                                          or request.headers.get("X-Forwarded-Proto", "").lower() == "https")


def install(app: Quart, data_dir: str) -> None:
    """Sign this app's sessions with the secret in `data_dir` (created on first start)."""
    app.secret_key = _secret(Path(data_dir) / SECRET_FILE)
    app.session_interface = SessionInterface()
    app.extensions[GUARD] = LoginGuard()
    app.config.update(SESSION_COOKIE_NAME="kakuremichi_session", SESSION_COOKIE_HTTPONLY=True,
                      SESSION_COOKIE_SAMESITE="Lax", PERMANENT_SESSION_LIFETIME=LIFETIME)


def _secret(path: Path) -> bytes:
    if not path.exists():
        datadir.create_secret_file(path, secrets.token_bytes(32).hex() + "\n")
    try:
        secret = bytes.fromhex(path.read_text().strip())
    except ValueError:
        secret = b""
    if len(secret) < 32:
        raise OSError(errno.EINVAL, "not a web session secret (delete it and control makes a new one)", str(path))
    return secret


def _token_fingerprint() -> str:
    """Identifies the current admin token without revealing its hash (the cookie is signed, not encrypted)."""
    return hmac.new(b"kakuremichi web session", current().admin_token_hash.encode(), hashlib.sha256).hexdigest()[:16]


def logged_in() -> bool:
    """Whether this request's cookie is a live admin session (looked up once per request)."""
    if "logged_in" not in g:
        g.logged_in = (hmac.compare_digest(str(session.get("admin", "")).encode(), _token_fingerprint().encode())
                       and session_open(current().db, session.get(SESSION_ID)))
    return g.logged_in


def session_id() -> str | None:
    """This request's session id, for what outlives the request (an event stream) to check `session_open`."""
    return session.get(SESSION_ID)


@db_session
def session_open(db: Database, opened: object) -> bool:
    """Whether the session `opened` is still live in the database: not logged out, not expired."""
    if not isinstance(opened, str):
        return False
    row = db.WebSession.get(id_hash=auth.key_hash(opened))
    return row is not None and row.expires_at > utcnow()


def _open_session(db: Database, id_hash: str) -> None:
    now = utcnow()
    db.WebSession.select(lambda row: row.expires_at <= now).delete(bulk=True)  # logins that were never ended
    db.WebSession(id_hash=id_hash, expires_at=now + LIFETIME)


def _end_session(db: Database, id_hash: str) -> None:
    db.WebSession.select(lambda row: row.id_hash == id_hash).delete(bulk=True)


def log_in(password: str) -> bool:
    """Open an admin session if `password` is the admin token (compared in constant time); raises
    LoginThrottled, without looking at `password`, while this address has to wait."""
    guard: LoginGuard = current_app.extensions[GUARD]
    remote = request.remote_addr or "?"
    wait = guard.throttle.wait(remote)
    if wait > 0:
        guard.failures.record(remote, reason="throttled")
        raise LoginThrottled(math.ceil(wait))
    if not auth.matches(password.strip(), current().admin_token_hash):
        guard.throttle.failed(remote)
        guard.failures.record(remote, reason="wrong token")
        return False
    opened = secrets.token_urlsafe(32)
    current().write(_open_session, auth.key_hash(opened))
    session.clear()
    session.permanent = True
    session["admin"] = _token_fingerprint()
    session[SESSION_ID] = opened
    session[CSRF_FIELD] = secrets.token_urlsafe(32)  # a fresh token: nothing issued before login stays valid
    log(logger, logging.INFO, "web login", remote=request.remote_addr or "?")
    return True


def log_out() -> None:
    """End this session here and on every other control: its row goes, so copies of the cookie fail too."""
    ending = session.get(SESSION_ID)
    if isinstance(ending, str):
        current().write(_end_session, auth.key_hash(ending))
    session.clear()
    g.logged_in = False


def csrf_token() -> str:
    """This session's CSRF token, which every form posts back; made on first use (the login form)."""
    if CSRF_FIELD not in session:
        session[CSRF_FIELD] = secrets.token_urlsafe(32)
    return session[CSRF_FIELD]


def csrf_valid(submitted: str | None) -> bool:
    expected = session.get(CSRF_FIELD)
    return bool(expected and submitted) and hmac.compare_digest(submitted.encode(), expected.encode())
