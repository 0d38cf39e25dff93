"""API keys and the admin token: random, shown once, stored only as SHA-256, compared in constant time.

Keys carry 32 random bytes, so a plain SHA-256 (not a slow password hash) is enough to make a leaked
database useless, and it lets control look a key up by its hash.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from kakuremichi.control.validation import ApiError

AGENT_PREFIX = "agt_"
GATEWAY_PREFIX = "gtw_"
ADMIN_PREFIX = "kma_"
PREFIXES = {"agent": AGENT_PREFIX, "gateway": GATEWAY_PREFIX}


def new_key(prefix: str) -> str:
    return prefix + secrets.token_urlsafe(32)


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def matches(key: str, stored_hash: str | None) -> bool:
    """Whether `key` hashes to `stored_hash`, without leaking where they differ."""
    return stored_hash is not None and hmac.compare_digest(key_hash(key), stored_hash)


def bearer_token(header: str | None) -> str | None:
    """The token of an `Authorization: Bearer …` header."""
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def require_bearer(header: str | None, *accepted_hashes: str | None, what: str = "the admin token") -> None:
    """Raise the API's 401 (no token) or 403 (a token matching none of `accepted_hashes`)."""
    token = bearer_token(header)
    if token is None:
        raise ApiError(401, "unauthorized", f"missing token: send Authorization: Bearer <{what}>")
    if not any([matches(token, stored) for stored in accepted_hashes]):  # a list: every one is compared
        raise ApiError(403, "forbidden", f"the token is not {what}")
