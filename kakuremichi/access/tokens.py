"""Signed tokens: visitor sessions (the cookie), share links, and the one-time codes an SSO login hands back.

A token is `payload.mac`, both base64url: the payload is JSON claims, the mac an HMAC-SHA256 over the kind and
the payload with the deployment's access key, so one kind is never taken for another. Every token names its
tunnel and expiry; a session also carries the tunnel's session epoch (bumped to revoke them all) and the share
link that opened it, if one did. Parsing is strict and bounded: anything else is simply no token.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
from typing import Literal

import msgspec

Kind = Literal["session", "share", "code"]
MAX_TOKEN = 4096  # bytes: a cookie or a path segment, never more
_BASE64URL = re.compile(rb"[A-Za-z0-9_-]{1,4096}\Z")


class Claims(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    tunnel: str
    expires: float  # Unix time
    issued: float
    id: str = ""  # a share link's id; any token's unique id
    epoch: int = 0  # the tunnel's session epoch when issued
    user: str = ""
    email: str = ""
    groups: tuple[str, ...] = ()
    link: str = ""  # the share link a session came from ("" for logins)


_decoder = msgspec.json.Decoder(Claims)


def new_id() -> str:
    return secrets.token_urlsafe(12)


def sign(key: bytes, kind: Kind, claims: Claims) -> str:
    return seal(key, kind, msgspec.json.encode(claims))


def verify(key: bytes, kind: Kind, token: str | bytes, now: float) -> Claims | None:
    """The claims of a genuine, unexpired token of `kind`; None for anything else (never raises)."""
    data = unseal(key, kind, token)
    try:
        claims = _decoder.decode(data) if data is not None else None
    except (ValueError, msgspec.DecodeError):
        return None
    if claims is None or not claims.expires > now:  # also refuses NaN
        return None
    return claims


def seal(key: bytes, kind: str, data: bytes) -> str:
    """`data` signed (not encrypted) as `payload.mac` for `kind`."""
    payload = _b64(data)
    return payload + "." + _b64(_mac(key, kind, payload.encode()))


def unseal(key: bytes, kind: str, token: str | bytes) -> bytes | None:
    """The data of a genuine token of `kind`, else None."""
    raw = token.encode("latin-1", "replace") if isinstance(token, str) else token
    if not key or len(raw) > MAX_TOKEN:
        return None
    payload, dot, mac = raw.partition(b".")
    if not dot or not _BASE64URL.match(payload) or not _BASE64URL.match(mac):
        return None
    try:
        if not hmac.compare_digest(_mac(key, kind, payload), _unb64(mac)):
            return None
        return _unb64(payload)
    except (binascii.Error, ValueError):
        return None


def _mac(key: bytes, kind: str, payload: bytes) -> bytes:
    return hmac.new(key, kind.encode() + b"\0" + payload, hashlib.sha256).digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(data: bytes) -> bytes:
    return base64.urlsafe_b64decode(data + b"=" * (-len(data) % 4))
