"""Anti-replay sliding window for transport counters (RFC 6479 semantics, 2048 counters wide).

The bitmap is one Python int, so shifting and testing are single C-level big-int operations rather
than a Python loop over words. `check` is cheap and side-effect free (used before decrypting);
`update` records a counter only after its packet authenticated, so forgeries cannot poison it.
"""

from __future__ import annotations

WINDOW_SIZE = 2048
_MASK = (1 << WINDOW_SIZE) - 1


class ReplayWindow:
    __slots__ = ("highest", "bitmap")

    def __init__(self) -> None:
        self.highest = -1  # no counter seen yet
        self.bitmap = 0  # bit i set <=> counter (highest - i) was seen

    def check(self, counter: int, limit: int) -> bool:
        """True if `counter` is new, inside the window and below `limit` (REJECT_AFTER_MESSAGES)."""
        if counter >= limit:
            return False
        behind = self.highest - counter
        if behind < 0:
            return True
        return behind < WINDOW_SIZE and not (self.bitmap >> behind) & 1

    def update(self, counter: int) -> bool:
        """Record `counter`; False if it was already seen or fell out of the window meanwhile."""
        behind = self.highest - counter
        if behind < 0:
            ahead = -behind
            self.bitmap = ((self.bitmap << ahead) | 1) & _MASK if ahead < WINDOW_SIZE else 1
            self.highest = counter
            return True
        if behind >= WINDOW_SIZE or (self.bitmap >> behind) & 1:
            return False
        self.bitmap |= 1 << behind
        return True
