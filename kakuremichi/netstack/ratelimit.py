"""The rate of the packets the stack makes up on its own: RSTs to closed ports, ICMP errors, echo replies.

As Linux's icmp_ratelimit (per peer) with icmp_msgs_per_sec (in total): a flood from one source spends
that source's answers, not everyone's, and the stack's total work on answers stays bounded.
"""

from __future__ import annotations

from kakuremichi.buckets import TokenBuckets

ANSWERS_PER_SECOND = 20  # per source
ANSWER_BURST = 40
TOTAL_ANSWERS_PER_SECOND = 400
MAX_SOURCES = 4096


def answer_limit() -> TokenBuckets:
    """`allow(source, now)`: may the stack answer one more packet from `source` now?"""
    return TokenBuckets(ANSWERS_PER_SECOND, ANSWER_BURST, total_rate=TOTAL_ANSWERS_PER_SECOND,
                        max_keys=MAX_SOURCES)
