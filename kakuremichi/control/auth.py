"""API keys and the admin token: random, shown once, stored only as SHA-256, compared in constant time;
and what keeps guessing them slow and quiet: a per-address throttle and a per-address log limit.

Keys carry 32 random bytes, so a plain SHA-256 (not a slow password hash) is enough to make a leaked
database useless, and it lets control look a key up by its hash.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import logging
import secrets
import time
from collections.abc import Callable

from kakuremichi.control.bodies import ApiError
from kakuremichi.logs import log

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


MAX_TRACKED_ADDRESSES = 1024  # per-address bookkeeping kept; past it, what is over is forgotten first


def _bound(table: dict, finished: Callable[[object], bool]) -> None:
    """Keep `table` (remote address → entry) to MAX_TRACKED_ADDRESSES: drop finished entries, then the oldest."""
    if len(table) <= MAX_TRACKED_ADDRESSES:
        return
    for remote in [r for r, entry in table.items() if finished(entry)]:
        del table[remote]
    for remote in list(itertools.islice(table, max(0, len(table) - MAX_TRACKED_ADDRESSES))):
        del table[remote]


class FailureLog:
    """Logs `message` for the first `burst` failures of each remote address in a minute and counts the rest;
    the address's next logged line says how many were not (`suppressed`). A guesser gets a line a minute."""

    def __init__(self, logger: logging.Logger, message: str, burst: int = 5, interval: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.logger, self.message, self.burst, self.interval, self.clock = logger, message, burst, interval, clock
        self._windows: dict[str, tuple[float, int, int]] = {}  # remote → (window start, failures in it, unlogged)

    def record(self, remote: str, **fields: object) -> None:
        now = self.clock()
        _bound(self._windows, lambda window: now - window[0] >= self.interval)
        start, count, unlogged = self._windows.get(remote, (now, 0, 0))
        if now - start >= self.interval:
            start, count = now, 0
        if count < self.burst:
            log(self.logger, logging.WARNING, self.message, remote=remote, **fields,
                **({"suppressed": unlogged} if unlogged else {}))
            unlogged = 0
        else:
            unlogged += 1
        self._windows[remote] = (start, count + 1, unlogged)


class Throttle:
    """A token bucket per remote address: `capacity` failed attempts at once, then one per `refill` seconds."""

    def __init__(self, capacity: int = 5, refill: float = 12.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.capacity, self.refill, self.clock = capacity, refill, clock
        self._buckets: dict[str, tuple[float, float]] = {}  # remote → (tokens, when counted)

    def _tokens(self, remote: str, now: float) -> float:
        tokens, when = self._buckets.get(remote, (self.capacity, now))
        return min(self.capacity, tokens + (now - when) / self.refill)

    def wait(self, remote: str) -> float:
        """Seconds until `remote` may try again; 0 when it may now."""
        return max(0.0, (1 - self._tokens(remote, self.clock())) * self.refill)

    def failed(self, remote: str) -> None:
        now = self.clock()
        _bound(self._buckets, lambda bucket: bucket[0] + (now - bucket[1]) / self.refill >= self.capacity)
        self._buckets[remote] = (max(0.0, self._tokens(remote, now) - 1), now)
