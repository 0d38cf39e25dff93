"""Token buckets by key (a source address), bounded in number: the one rate limit of every packet path.

Each key may spend `burst` at once and gets `rate` tokens back a second; an optional total bucket caps all
keys together. The table keeps at most `max_keys` buckets, the least recently used going first: a forgotten
key merely starts again with a full bucket (which the total, where there is one, still caps). Fed the time
by the caller, so the sans-IO cores use it on their injected clocks.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable

MAX_KEYS = 4096


def _refill(bucket: tuple[float, float], now: float, rate: float, burst: float) -> float:
    tokens, stamp = bucket
    return min(burst, tokens + max(now - stamp, 0.0) * rate)


class TokenBuckets:
    """`allow(key, now)`: may `key` spend one more token now? (It is spent when it may.)"""

    def __init__(self, rate: float, burst: float, *, total_rate: float | None = None,
                 max_keys: int = MAX_KEYS) -> None:
        self.rate, self.burst, self.total_rate, self.max_keys = rate, burst, total_rate, max_keys
        self._total = (float(total_rate or 0), 0.0)
        self._buckets: OrderedDict[Hashable, tuple[float, float]] = OrderedDict()  # key -> (tokens, when)

    def __len__(self) -> int:
        return len(self._buckets)

    def allow(self, key: Hashable, now: float) -> bool:
        bucket = self._buckets.get(key)
        tokens = self.burst if bucket is None else _refill(bucket, now, self.rate, self.burst)
        allowed = tokens >= 1
        if self.total_rate is not None:
            total = _refill(self._total, now, self.total_rate, self.total_rate)
            allowed = allowed and total >= 1
            self._total = (total - allowed, now)
        self._buckets[key] = (tokens - allowed, now)
        self._buckets.move_to_end(key)  # least recently used first
        if len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
        return allowed
