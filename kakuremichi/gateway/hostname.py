"""Host normalisation: one canonical spelling per domain, so routing and certificates can't be fooled.

`Example.COM.:8080`, `example.com` and `example.com.` must reach the same route (the original gateway
compared raw Host headers), and a Unicode name must match its punycode form. Anything that is not a
plausible host name is refused rather than guessed at.
"""

from __future__ import annotations

import ipaddress
import re

_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?\Z")
_WILDCARD = "*"


class InvalidHost(ValueError):
    """The Host header (or SNI name, or configured domain) is not a usable host name."""


def split_host_port(value: str) -> tuple[str, int | None]:
    """Split `host[:port]` / `[v6]:port`; the port must be numeric when present."""
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            raise InvalidHost("unterminated IPv6 literal")
        host, rest = value[: end + 1], value[end + 1 :]
    else:
        host, sep, port_text = value.rpartition(":")
        if not sep:
            return value, None
        rest = ":" + port_text
    if not rest:
        return host, None
    if not rest.startswith(":") or not rest[1:].isdigit() or not 0 < int(rest[1:]) < 65536:
        raise InvalidHost("bad port")
    return host, int(rest[1:])


def normalize_host(value: str | bytes, *, allow_wildcard: bool = False) -> str:
    """Canonical lowercase ASCII host name (no port, no trailing dot); IP literals are kept as text.

    With `allow_wildcard`, a leading `*.` label is accepted (route configuration, not requests).
    """
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidHost("host is not valid UTF-8") from None
    host, _ = split_host_port(value.strip())
    if host.startswith("["):
        try:
            return "[" + ipaddress.IPv6Address(host[1:-1]).compressed + "]"
        except ValueError:
            raise InvalidHost("bad IPv6 literal") from None
    host = host[:-1] if host.endswith(".") else host
    if not host or len(host) > 253:
        raise InvalidHost("empty or overlong host")
    labels = host.split(".")
    out = []
    for index, label in enumerate(labels):
        if allow_wildcard and index == 0 and label == _WILDCARD and len(labels) > 1:
            out.append(label)
            continue
        out.append(_normalize_label(label))
    name = ".".join(out)
    if len(name) > 253:
        raise InvalidHost("overlong host")
    return name


def _normalize_label(label: str) -> str:
    if not label.isascii():
        try:
            label = label.encode("idna").decode("ascii")
        except UnicodeError:
            raise InvalidHost("label is not valid IDNA") from None
    label = label.lower()
    if not _LABEL.match(label):
        raise InvalidHost("bad label")
    return label


def wildcard_parent(host: str) -> str | None:
    """`a.example.com` → `*.example.com`, the wildcard route that may cover it."""
    _, dot, parent = host.partition(".")
    return f"{_WILDCARD}.{parent}" if dot and parent else None
