"""Per-source token buckets for handshake messages while the device is under load (as wireguard-go's
ratelimiter: 20 handshakes/s per address, bursts of 5), so one address cannot starve the rest."""

from __future__ import annotations

from typing import Callable

PACKETS_PER_SECOND = 20
BURST = 5
_GC_INTERVAL = 1.0


class RateLimiter:
    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # address -> (tokens, last refill)
        self._last_gc = clock()

    def allow(self, address: str) -> bool:
        now = self.clock()
        if now - self._last_gc > _GC_INTERVAL:
            self._buckets = {a: b for a, b in self._buckets.items() if now - b[1] < _GC_INTERVAL}
            self._last_gc = now
        tokens, last = self._buckets.get(address, (BURST, now))
        tokens = min(BURST, tokens + (now - last) * PACKETS_PER_SECOND)
        allowed = tokens >= 1
        self._buckets[address] = (tokens - 1 if allowed else tokens, now)
        return allowed
