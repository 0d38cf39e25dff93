"""The values kakuremichi's parts exchange, one grammar each: a tunnel's public `Domain`, the `Target` an
agent forwards to, a WireGuard or listen `Endpoint`, and the host of a request (`request_host`).

Control's API and web UI, the protocol decoder, the agent, the gateway and the WireGuard config all parse
with these, so a value one part accepts is never refused by another. `parse` is lenient about case,
IDNA and defaults; `str()` is the canonical form that is stored and pushed, and parses to the same value.
Importing this module loads no Trio (the public-suffix list is read on first use).
"""

from __future__ import annotations

import functools
import ipaddress
import re
import socket
from dataclasses import dataclass
from typing import Any

import idna

_PORT = re.compile(r"[0-9]{1,5}\Z")
_LDH_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\Z")
_HOST_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?\Z")  # names the resolver takes, `_` too
_WILDCARD = "*."


class InvalidValue(ValueError):
    """A value that does not follow its grammar; the message says what is wrong and what is expected."""


class InvalidHost(InvalidValue):
    """A request's Host (or SNI name) that is no usable host."""


class InvalidDomain(InvalidValue):
    pass


class InvalidTarget(InvalidValue):
    pass


class InvalidEndpoint(InvalidValue):
    pass


class InvalidPortRange(InvalidValue):
    pass


@functools.cache
def _public_suffixes():
    from publicsuffixlist import PublicSuffixList  # ~50 ms to read the list: only when a domain is checked

    return PublicSuffixList()  # an unknown top-level label counts as a public suffix too


def _ascii_name(text: str, error: type[InvalidValue], *, label: re.Pattern = _HOST_LABEL) -> str:
    """Lowercase ASCII spelling of a DNS name (IDNA for Unicode, no trailing dot), each label checked."""
    name = text[:-1] if text.endswith(".") else text
    if not name:
        raise error(f"{text!r} has no name: expected a host name like app.example.com")
    if not name.isascii():
        try:
            name = idna.encode(name, uts46=True).decode("ascii")
        except idna.IDNAError as exc:
            raise error(f"{text!r} is not a valid internationalised name ({exc})") from None
    name = name.lower()
    for part in name.split("."):
        if not label.match(part):
            allowed = "letters, digits or '-'" + (" or '_'" if label is _HOST_LABEL else "")
            shown = "an empty label" if not part else f"the label {part!r}"
            raise error(f"{text!r} has {shown}: labels are 1-63 {allowed}, not starting or ending with '-'")
        if part.startswith("xn--"):
            try:
                idna.decode(part)
            except idna.IDNAError as exc:
                raise error(f"{text!r}: the label {part!r} is not valid punycode ({exc})") from None
    if len(name) > 253:
        raise error(f"{text!r} is longer than 253 characters")
    if _numeric(name):
        raise error(f"{text!r} reads as a numeric IPv4 address: write an address as four decimal numbers "
                    f"like 127.0.0.1, or use a host name")
    return name


def _numeric(name: str) -> bool:
    """Would a resolver read it as an IPv4 address (`2130706433`, `0x7f.1`, `127.1`)?"""
    if name.rpartition(".")[2].isdigit():
        return True
    try:
        socket.inet_aton(name)
    except OSError:
        return False
    return True


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        return False


def _host(text: str, error: type[InvalidValue]) -> str:
    """An IP address (IPv6 without brackets, as `ipaddress` writes it) or a host name."""
    if "%" in text:
        raise error(f"{text!r}: scoped IPv6 addresses (with %zone) are not supported")
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        pass
    if ":" in text:
        raise error(f"{text!r} is not an IPv6 address")
    return _ascii_name(text, error)


def _port(text: str, error: type[InvalidValue], whole: str) -> int:
    if not _PORT.match(text) or not 0 < int(text) < 65536:
        raise error(f"{whole!r}: the port {text!r} is not a number from 1 to 65535")
    return int(text)


def _authority(text: str, error: type[InvalidValue], example: str, default_port: int | None = None
               ) -> tuple[str, int]:
    """`host:port` or `[v6]:port` (the port may be left out when there is a default)."""
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise error(f"{text!r} has an unclosed IPv6 bracket: write it like [2001:db8::1]:{example}")
        host, rest = text[1:end], text[end + 1:]
        if ":" not in host:
            raise error(f"{text!r}: only IPv6 addresses go in brackets")
        if rest and not rest.startswith(":"):
            raise error(f"{text!r}: expected :port after the IPv6 address, like [2001:db8::1]:{example}")
        port_text = rest[1:] if rest else None
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            host, port_text = text, None
        elif ":" in host:
            raise error(f"{text!r}: write IPv6 hosts in brackets, like [2001:db8::1]:{example}")
    if not host:
        raise error(f"{text!r} has no host: expected host:port, like localhost:{example}")
    if port_text is None:
        if default_port is None:
            raise error(f"{text!r} has no port: expected host:port, like {_with_port(host, int(example))}")
        port = default_port
    else:
        port = _port(port_text, error, text)
    return _host(host, error), port


def _with_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _text(value: Any, error: type[InvalidValue], expected: str) -> str:
    if not isinstance(value, str):
        raise error(f"must be a string: {expected}")
    return value.strip()


@dataclass(frozen=True)
class Domain:
    """A tunnel's public name: at least two labels of letters, digits and '-', IDNA as punycode, not a
    public suffix (com, co.uk, github.io) and not an IP address; `*.` before a registered domain makes it
    a wildcard. `app.localhost` names (RFC 6761) work for local development; `localhost` itself does not."""

    name: str  # canonical, `*.` included for a wildcard

    @classmethod
    def parse(cls, value: Any) -> Domain:
        text = _text(value, InvalidDomain, "a host name like app.example.com")
        if any(c in text for c in ":/@?#") or any(c.isspace() for c in text):
            raise InvalidDomain(f"{text!r} must be a host name like app.example.com, without scheme, port or path")
        wildcard = text.startswith(_WILDCARD)
        rest = text[len(_WILDCARD):] if wildcard else text
        if _is_ip(rest):
            raise InvalidDomain(f"{text!r} is an IP address: a tunnel needs a host name like app.example.com")
        name = _ascii_name(rest, InvalidDomain, label=_LDH_LABEL)
        if name == "localhost" and not wildcard:
            raise InvalidDomain("localhost is every machine's own name: use a name under it like app.localhost, "
                                "or a real domain")
        if "." not in name and not wildcard:
            raise InvalidDomain(f"{text!r} has one label: expected a name like app.example.com")
        if _public_suffixes().is_public(name):
            if wildcard:
                raise InvalidDomain(f"{text!r}: a wildcard must stand before a registered domain, like "
                                    f"*.example.com ({name} is a public suffix)")
            raise InvalidDomain(f"{text!r} is a public suffix, shared by many owners (like com, co.uk or "
                                f"github.io): use a name under it, like app.{name}")
        if len(name) + len(_WILDCARD) * wildcard > 253:
            raise InvalidDomain(f"{text!r} is longer than 253 characters")
        return cls(_WILDCARD + name if wildcard else name)

    @property
    def wildcard(self) -> bool:
        return self.name.startswith(_WILDCARD)

    def __str__(self) -> str:
        return self.name


def wildcard_parent(host: str) -> str | None:
    """`a.example.com` → `*.example.com`, the wildcard domain that may cover it."""
    _, dot, parent = host.partition(".")
    return f"{_WILDCARD}{parent}" if dot and parent else None


@dataclass(frozen=True)
class Target:
    """Where an agent forwards a tunnel's connections: `host:port` (any TCP), `http://host[:port]` (the
    same, port 80 by default) or `https://host[:port]` (the agent speaks TLS to it, port 443 by default)."""

    host: str
    port: int
    tls: bool = False

    _EXPECTED = "host:port, http://host[:port] or https://host[:port], like localhost:8080"

    @classmethod
    def parse(cls, value: Any) -> Target:
        text = _text(value, InvalidTarget, cls._EXPECTED)
        scheme, sep, rest = text.partition("://")
        if not sep:
            scheme, rest = "", text
        scheme = scheme.lower()
        if scheme not in ("", "http", "https"):
            raise InvalidTarget(f"{text!r}: the agent serves no {scheme}:// target; expected {cls._EXPECTED}")
        rest = rest[:-1] if scheme and rest.endswith("/") else rest
        if any(c in rest for c in "/?#"):
            raise InvalidTarget(f"{text!r}: a target has no path, query or fragment (each request keeps its own); "
                                f"expected {cls._EXPECTED}")
        if "@" in rest:
            raise InvalidTarget(f"{text!r}: a target has no user or password; expected {cls._EXPECTED}")
        default = {"http": 80, "https": 443}.get(scheme)
        host, port = _authority(rest, InvalidTarget, "8080", default)
        return cls(host, port, scheme == "https")

    def __str__(self) -> str:
        return ("https://" if self.tls else "") + _with_port(self.host, self.port)


@dataclass(frozen=True)
class Endpoint:
    """`host:port` of a UDP or TCP socket (a gateway's WireGuard endpoint, a listen address); IPv6 in
    brackets, like [2001:db8::1]:51820."""

    host: str  # IPv6 without brackets, as socket functions take it
    port: int

    @classmethod
    def parse(cls, value: Any, default_port: int | None = None) -> Endpoint:
        text = _text(value, InvalidEndpoint, "host:port like 203.0.113.1:51820")
        if any(c in text for c in "/@?#") or any(c.isspace() for c in text):
            raise InvalidEndpoint(f"{text!r} must be host:port like 203.0.113.1:51820")
        return cls(*_authority(text, InvalidEndpoint, "51820", default_port))

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    def __str__(self) -> str:
        return _with_port(self.host, self.port)


@dataclass(frozen=True)
class PortRanges:
    """The public ports control hands to tcp/udp tunnels: `20000-29999`, or several ranges and single ports
    separated by commas (`22,2222,20000-29999`). Ports below 1024 are allowed when listed: whether a gateway
    may bind them is the gateway's to say (it reports the failure)."""

    ranges: tuple[tuple[int, int], ...]  # (first, last), inclusive, sorted, not overlapping

    _EXPECTED = "ports or first-last ranges from 1 to 65535, separated by commas, like 20000-29999"

    @classmethod
    def parse(cls, value: Any) -> PortRanges:
        text = _text(value, InvalidPortRange, cls._EXPECTED)
        ranges = []
        for part in (piece.strip() for piece in text.split(",")):
            first, dash, last = part.partition("-")
            bounds = (first.strip(), last.strip() if dash else first.strip())
            if not all(_PORT.match(bound) and 0 < int(bound) < 65536 for bound in bounds):
                raise InvalidPortRange(f"{text!r}: {part!r} is not a port or range; expected {cls._EXPECTED}")
            low, high = map(int, bounds)
            if low > high:
                raise InvalidPortRange(f"{text!r}: the range {part!r} ends before it starts")
            ranges.append((low, high))
        ranges.sort()
        for (_, high), (low, _) in zip(ranges, ranges[1:]):
            if low <= high:
                raise InvalidPortRange(f"{text!r}: ranges overlap at port {low}")
        return cls(tuple(ranges))

    def __contains__(self, port: object) -> bool:
        return isinstance(port, int) and any(low <= port <= high for low, high in self.ranges)

    def __iter__(self):
        """Every port, lowest first."""
        for low, high in self.ranges:
            yield from range(low, high + 1)

    def __str__(self) -> str:
        return ",".join(str(low) if low == high else f"{low}-{high}" for low, high in self.ranges)


@functools.lru_cache(maxsize=4096)
def request_host(value: str | bytes) -> str:
    """The lookup key of a request's Host header, :authority or SNI name: its host without port or trailing
    dot, lowercase ASCII; IP addresses are kept (IPv6 in brackets). Raises InvalidHost. Cached: every request
    asks, with the same few hosts (12 µs each uncached; a refused host is not cached)."""
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidHost("the host is not valid UTF-8") from None
    value = value.strip()
    if any(c in value for c in "/@?#") or any(c.isspace() for c in value):
        raise InvalidHost(f"{value!r} is not a host")
    host, port = _authority(value, InvalidHost, "443", 0)
    return f"[{host}]" if ":" in host else host
