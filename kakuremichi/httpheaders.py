"""HTTP header rules every proxy of kakuremichi follows (the gateway's reverse proxy, the agent's forward
proxy): hop-by-hop fields belong to one connection and are never passed on."""

from __future__ import annotations

from collections.abc import Iterable

Headers = list[tuple[bytes, bytes]]

# RFC 9110 §7.6.1 connection-specific fields, plus the de-facto ones proxies also drop.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)


def connection_tokens(headers: Headers) -> set[bytes]:
    """Lower-cased tokens of every Connection header (names of extra hop-by-hop fields, `upgrade`, …)."""
    tokens: set[bytes] = set()
    for name, value in headers:
        if name == b"connection":
            tokens.update(t.strip().lower() for t in value.split(b",") if t.strip())
    return tokens


def strip_hop_by_hop(headers: Headers, *, keep: Iterable[bytes] = ()) -> Headers:
    """Drop hop-by-hop fields (and those named in Connection) except the ones in `keep`."""
    drop = (HOP_BY_HOP | connection_tokens(headers)) - set(keep)
    return [(n, v) for n, v in headers if n not in drop]
