"""Brute-force limits on password and share-link checks: failures counted per source address and per
tunnel over a sliding window, fed the time by the caller (a fake clock in tests)."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    per_source: int = 10  # failed attempts one address may make per window, on any tunnel
    per_tunnel: int = 100  # failed attempts a tunnel takes per window from everyone together
    window: float = 300.0  # seconds
    max_tracked: int = 65536  # keys remembered at most: a flood of addresses cannot fill the memory


class Throttle:
    """Failure times per key (`source:<ip>`, `tunnel:<id>`); a key over its limit is refused until its oldest
    failure leaves the window."""

    def __init__(self, limits: Limits | None = None) -> None:
        self.limits = limits or Limits()
        self._failures: dict[str, deque[float]] = {}

    def allows(self, source: str, tunnel: str, now: float) -> bool:
        """Whether another attempt from `source` on `tunnel` may be checked now."""
        limits = self.limits
        return (self._count(f"source:{source}", now) < limits.per_source
                and self._count(f"tunnel:{tunnel}", now) < limits.per_tunnel)

    def failed(self, source: str, tunnel: str, now: float) -> None:
        for key in (f"source:{source}", f"tunnel:{tunnel}"):
            times = self._failures.get(key)
            if times is None:
                if len(self._failures) >= self.limits.max_tracked:
                    self._forget_stale(now)
                times = self._failures.setdefault(key, deque())
            times.append(now)

    def _count(self, key: str, now: float) -> int:
        times = self._failures.get(key)
        if not times:
            return 0
        while times and times[0] <= now - self.limits.window:
            times.popleft()
        if not times:
            del self._failures[key]
            return 0
        return len(times)

    def _forget_stale(self, now: float) -> None:
        for key in list(self._failures):
            self._count(key, now)
        if len(self._failures) >= self.limits.max_tracked:  # all recent: forget the oldest half
            for key in list(self._failures)[: len(self._failures) // 2]:
                del self._failures[key]
