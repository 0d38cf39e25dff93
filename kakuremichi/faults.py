"""Containing what one hostile input can do: the unexpected exception it raised is counted, logged at most
once per interval, and the process goes on.

Every receive path (a packet in the netstack or WireGuard, a connection in a listener) catches at its own
boundary what its parsers did not foresee and hands it to a `Contained`: the input is dropped or the
connection closed, the count is kept for metrics and status, and a tenant who sends the same poison
packet a million times gets one log line per interval rather than a million tracebacks. Imports no I/O,
so the sans-IO cores use it too.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable

LOG_INTERVAL = 60.0  # seconds between two tracebacks of one kind at one boundary


class Contained:
    """Unexpected exceptions caught at one boundary (`site`), counted by exception type."""

    def __init__(self, logger: logging.Logger, site: str, interval: float = LOG_INTERVAL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.logger, self.site, self.interval, self.clock = logger, site, interval, clock
        self.counts: Counter[str] = Counter()
        self._last_logged: dict[str, tuple[float, int]] = {}  # kind -> (when logged, count then)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def record(self, exc: BaseException, **fields: object) -> None:
        """Count `exc`; log it with its traceback unless one of its kind was logged within the interval
        (the line then says how many went unlogged since)."""
        kind = type(exc).__name__
        self.counts[kind] += 1
        now = self.clock()
        last = self._last_logged.get(kind)
        if last is not None and now - last[0] < self.interval:
            return
        skipped = self.counts[kind] - 1 - (last[1] if last else 0)
        self._last_logged[kind] = (now, self.counts[kind])
        self.logger.error(f"{self.site}: unexpected error contained", exc_info=exc,
                          extra={"fields": {**fields, "error": kind, "suppressed": skipped}})
