"""Per-source token buckets for handshake messages while the device is under load (as wireguard-go's
ratelimiter: 20 handshakes/s per address, bursts of 5), so one address cannot starve the rest; at most
MAX_ADDRESSES are remembered, so a flood from forged addresses cannot grow the table."""

from __future__ import annotations

from typing import Callable

from kakuremichi.buckets import TokenBuckets

PACKETS_PER_SECOND = 20
BURST = 5
MAX_ADDRESSES = 4096


class RateLimiter:
    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self._buckets = TokenBuckets(PACKETS_PER_SECOND, BURST, max_keys=MAX_ADDRESSES)

    def __len__(self) -> int:
        return len(self._buckets)

    def allow(self, address: str) -> bool:
        return self._buckets.allow(address, self.clock())
