"""Which of a tunnel's backends takes the next request or connection, sans-IO: backends and their health in,
one backend out.

The lowest `priority` value that has any usable backend wins (a higher one is a fallback, used only when
every backend before it is down); among that priority's backends, smooth weighted round robin (nginx's: each
pick adds every weight to its backend's running score, takes the highest and subtracts the total from it), so
weights 3:1 give A A B A, never A A A B bunched. Disabled and draining backends take nothing new. With a key
(the client's address, an affinity cookie), weighted rendezvous hashing picks instead: the same key lands on
the same backend while it stays usable, and only the keys of a backend that leaves move.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Collection, Sequence
from typing import Protocol, TypeVar


class Backend(Protocol):
    """What the balancer reads of a backend (protocol.RouteBackend and the gateway's view of it)."""

    id: str
    weight: int
    priority: int
    enabled: bool
    draining: bool


B = TypeVar("B", bound=Backend)


def accepts_new(backend: Backend) -> bool:
    """Whether the backend may take a new request or connection at all (health aside)."""
    return backend.enabled and not backend.draining and backend.weight > 0


def usable(backends: Sequence[B], healthy: Callable[[B], bool], exclude: Collection[str] = ()) -> list[B]:
    """The backends of the lowest priority that has any healthy, accepting backend not in `exclude`."""
    candidates = [b for b in backends if b.id not in exclude and accepts_new(b) and healthy(b)]
    if not candidates:
        return []
    best = min(b.priority for b in candidates)
    return [b for b in candidates if b.priority == best]


class Balancer:
    """The running scores of one tunnel's smooth weighted round robin."""

    def __init__(self) -> None:
        self._scores: dict[str, int] = {}

    def choose(self, backends: Sequence[B], healthy: Callable[[B], bool], *, key: bytes | None = None,
               exclude: Collection[str] = ()) -> B | None:
        """The backend for the next request (None: no usable backend). `exclude`: ids already tried."""
        pool = usable(backends, healthy, exclude)
        if not pool:
            return None
        if key is not None:
            return max(pool, key=lambda b: _rendezvous(key, b))
        scores = self._scores
        if len(scores) > 4 * len(backends) + 16:  # ids of backends gone since
            ids = {b.id for b in backends}
            self._scores = scores = {i: s for i, s in scores.items() if i in ids}
        total = 0
        chosen, best = pool[0], -math.inf
        for backend in pool:
            score = scores.get(backend.id, 0) + backend.weight
            scores[backend.id] = score
            total += backend.weight
            if score > best:
                chosen, best = backend, score
        scores[chosen.id] -= total
        return chosen


def _rendezvous(key: bytes, backend: Backend) -> float:
    """Weighted rendezvous score: -weight / ln(h), h uniform in (0, 1) from the key and the backend id."""
    digest = hashlib.blake2b(key + b"\0" + backend.id.encode(), digest_size=8).digest()
    h = (int.from_bytes(digest, "big") + 1) / (2**64 + 2)
    return -backend.weight / math.log(h)
