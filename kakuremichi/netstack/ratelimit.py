"""Token buckets per source address for the packets the stack makes up on its own: RSTs to closed ports,
ICMP errors, echo replies.

As Linux's icmp_ratelimit (per peer) with icmp_msgs_per_sec (in total): a flood from one source spends
that source's answers, not everyone's, and the stack's total work on answers stays bounded. The table of
sources is bounded too (least recently heard from goes first; a forgotten source merely starts again
with a full bucket, which the total bucket still caps).
"""

from __future__ import annotations

from collections import OrderedDict

ANSWERS_PER_SECOND = 20  # per source
ANSWER_BURST = 40
TOTAL_ANSWERS_PER_SECOND = 400
MAX_SOURCES = 4096


def _refill(bucket: tuple[float, float], now: float, rate: float, burst: float) -> float:
    tokens, stamp = bucket
    return min(burst, tokens + max(now - stamp, 0.0) * rate)


class AnswerLimit:
    """`allow(source, now)`: may the stack answer one more packet from `source` now?"""

    def __init__(self, rate: float = ANSWERS_PER_SECOND, burst: float = ANSWER_BURST,
                 total_rate: float = TOTAL_ANSWERS_PER_SECOND, max_sources: int = MAX_SOURCES) -> None:
        self.rate, self.burst, self.total_rate, self.max_sources = rate, burst, total_rate, max_sources
        self._total = (float(total_rate), 0.0)
        self._buckets: OrderedDict[int, tuple[float, float]] = OrderedDict()  # source -> (tokens, when)

    def __len__(self) -> int:
        return len(self._buckets)

    def allow(self, source: int, now: float) -> bool:
        bucket = self._buckets.get(source)
        tokens = self.burst if bucket is None else _refill(bucket, now, self.rate, self.burst)
        total = _refill(self._total, now, self.total_rate, self.total_rate)
        allowed = tokens >= 1 and total >= 1
        self._buckets[source] = (tokens - allowed, now)
        self._buckets.move_to_end(source)  # least recently heard from first
        self._total = (total - allowed, now)
        if len(self._buckets) > self.max_sources:
            self._buckets.popitem(last=False)
        return allowed
