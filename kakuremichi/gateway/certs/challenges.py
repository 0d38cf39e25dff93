"""ACME HTTP-01 challenge responses the HTTP listener serves at /.well-known/acme-challenge/<token>.

The CA may validate through any gateway behind the domain's DNS, so the store answers both this
gateway's own challenges (`add`/`remove`, from its ACME orders; `own()` is what it shares through
control) and those other gateways published, which control pushes as a complete set (`replace_shared`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from kakuremichi.protocol import AcmeChallenge as Challenge

PATH_PREFIX = b"/.well-known/acme-challenge/"
_TOKEN = re.compile(rb"[A-Za-z0-9_-]{1,256}\Z")  # RFC 8555 §8.3: base64url, no padding


class ChallengeStore:
    """token → pending challenge, this gateway's own and those shared by the other gateways."""

    def __init__(self) -> None:
        self._own: dict[str, Challenge] = {}
        self._shared: dict[str, Challenge] = {}

    def add(self, challenge: Challenge) -> None:
        self._own[challenge.token] = challenge

    def remove(self, token: str) -> Challenge | None:
        return self._own.pop(token, None)

    def own(self) -> list[Challenge]:
        return list(self._own.values())

    def replace_shared(self, challenges: Iterable[Challenge]) -> None:
        """Answer exactly these challenges of other gateways from now on."""
        self._shared = {c.token: c for c in challenges}

    def answer(self, path: bytes, host: str) -> bytes | None:
        """The key authorization for a challenge request path on `host`, or None if not ours."""
        if not path.startswith(PATH_PREFIX):
            return None
        token = path[len(PATH_PREFIX):].split(b"?", 1)[0]
        if not _TOKEN.match(token):
            return None
        text = token.decode("ascii")
        challenge = self._own.get(text) or self._shared.get(text)
        if challenge is None or challenge.domain != host:
            return None
        return challenge.key_authorization.encode("ascii")

    def __len__(self) -> int:
        return len(self._own) + len(self._shared)
