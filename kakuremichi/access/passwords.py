"""Tunnel passwords stored as slow hashes (scrypt, RFC 7914, from hashlib: no extra dependency), so a dump of
control's database or of a gateway's config does not give the passwords away cheaply."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os

# n=2**14, r=8: 16 MiB and some 30-50 ms per check, the figure RFC 7914 gives for interactive logins
_N, _R, _P = 1 << 14, 8, 1
_PREFIX = "scrypt"
_MAX_PASSWORD = 1024  # longer input is refused before hashing: no one types more, and hashing is costly


def hash_password(password: str) -> str:
    """`scrypt$n$r$p$salt$hash` (base64url) of `password` with a fresh salt."""
    salt = os.urandom(16)
    digest = _scrypt(password, salt, _N, _R, _P)
    return "$".join([_PREFIX, str(_N), str(_R), str(_P), _b64(salt), _b64(digest)])


def verify_password(password: str, stored: str) -> bool:
    """Whether `password` matches the `stored` hash; a malformed hash matches nothing."""
    try:
        prefix, n, r, p, salt, digest = stored.split("$")
        n_, r_, p_ = int(n), int(r), int(p)
        if prefix != _PREFIX or not (1 < n_ <= 1 << 20 and 0 < r_ <= 32 and 0 < p_ <= 16):
            return False
        salt_b, digest_b = _unb64(salt), _unb64(digest)
    except ValueError:
        return False
    if len(password) > _MAX_PASSWORD:
        return False
    return hmac.compare_digest(_scrypt(password, salt_b, n_, r_, p_, len(digest_b)), digest_b)


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int, length: int = 32) -> bytes:
    return hashlib.scrypt(password.encode("utf-8", "surrogatepass"), salt=salt, n=n, r=r, p=p,
                          maxmem=128 * r * (n + p + 2) + (1 << 20), dklen=length)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
