"""ACME HTTP-01 challenge responses the HTTP listener serves at /.well-known/acme-challenge/<token>.

The CA may validate through any gateway behind the domain's DNS, so the store is filled both by this
gateway's own ACME orders and from control (`add` with what another gateway published); `observers`
lets the daemon forward this gateway's own challenges to control.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

PATH_PREFIX = b"/.well-known/acme-challenge/"
_TOKEN = re.compile(rb"[A-Za-z0-9_-]{1,256}\Z")  # RFC 8555 §8.3: base64url, no padding


@dataclass(frozen=True)
class Challenge:
    domain: str
    token: str
    key_authorization: str


class ChallengeStore:
    """token → pending challenge; observers hear `(challenge, added)` for each change."""

    def __init__(self) -> None:
        self._by_token: dict[str, Challenge] = {}
        self.observers: list[Callable[[Challenge, bool], None]] = []

    def add(self, challenge: Challenge) -> None:
        self._by_token[challenge.token] = challenge
        for observer in self.observers:
            observer(challenge, True)

    def remove(self, token: str) -> None:
        challenge = self._by_token.pop(token, None)
        if challenge is not None:
            for observer in self.observers:
                observer(challenge, False)

    def answer(self, path: bytes, host: str) -> bytes | None:
        """The key authorization for a challenge request path on `host`, or None if not ours."""
        if not path.startswith(PATH_PREFIX):
            return None
        token = path[len(PATH_PREFIX):].split(b"?", 1)[0]
        if not _TOKEN.match(token):
            return None
        challenge = self._by_token.get(token.decode("ascii"))
        if challenge is None or challenge.domain != host:
            return None
        return challenge.key_authorization.encode("ascii")

    def __len__(self) -> int:
        return len(self._by_token)
