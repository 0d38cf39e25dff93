"""Headers a reverse proxy must rewrite: X-Forwarded-* and Forwarded added (hop-by-hop ones are dropped
with kakuremichi.httpheaders).

A client can send any X-Forwarded-For it likes, so the incoming chain is only kept when the peer is
a configured trusted proxy (a load balancer in front of the gateway); otherwise the gateway's own
view of the client replaces it. X-Real-IP is the client address alone — never `ip:port`.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from kakuremichi.httpheaders import Headers, strip_hop_by_hop

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_CLIENT_SET = frozenset(
    {b"x-forwarded-for", b"x-forwarded-host", b"x-forwarded-proto", b"x-real-ip", b"forwarded"}
)


@dataclass(frozen=True)
class ForwardingPolicy:
    """Which peers may hand us an existing forwarding chain (CIDRs of load balancers in front)."""

    trusted_proxies: tuple[IPNetwork, ...] = field(default=())

    @classmethod
    def from_strings(cls, cidrs: Iterable[str]) -> ForwardingPolicy:
        return cls(tuple(ipaddress.ip_network(c.strip(), strict=False) for c in cidrs if c.strip()))

    def trusts(self, ip: str) -> bool:
        if not self.trusted_proxies:
            return False  # the usual case, asked three times per request: no address parsing
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return False
        return any(address in net for net in self.trusted_proxies)


# HSTS on the HTTPS responses of a tunnel with forceHttps: a year, the usual figure (and the least the
# browsers' preload lists take), without includeSubDomains: a subdomain may be another tenant's tunnel.
HSTS = (b"strict-transport-security", b"max-age=31536000")


def response_headers(headers: Headers, hsts: bool, *, keep: Iterable[bytes] = ()) -> Headers:
    """An agent's response headers as the client gets them: hop-by-hop fields dropped (but `keep`), and
    HSTS added when `hsts` unless the agent's service set its own."""
    out = strip_hop_by_hop(list(headers), keep=keep)
    if hsts and not any(n == HSTS[0] for n, _ in out):
        out.append(HSTS)
    return out


def _forwarded_node(ip: str) -> str:
    """RFC 7239 §6 node: IPv6 addresses are bracketed and quoted."""
    return f'"[{ip}]"' if ":" in ip else ip


_TOKEN = re.compile(r"[\w!#$%&'*+.^`|~-]+")  # \w: what str.isalnum() takes, and "_"


def _forwarded_token(value: str) -> str:
    """RFC 7239 values are tokens or quoted strings; quote anything that is not a plain token."""
    if _TOKEN.fullmatch(value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def client_ip(peer_ip: str, headers: Headers, policy: ForwardingPolicy) -> str:
    """The original client: the right-most untrusted hop of a chain handed to us by trusted proxies."""
    if not policy.trusts(peer_ip):
        return peer_ip
    chain = [h.strip() for name, value in headers if name == b"x-forwarded-for"
             for h in value.decode("latin-1").split(",") if h.strip()]
    for hop in reversed(chain):
        if not policy.trusts(hop):
            return hop
    return chain[0] if chain else peer_ip


def forwarded_headers(
    headers: Headers, *, peer_ip: str, host: str, scheme: str, policy: ForwardingPolicy
) -> Headers:
    """Request headers as sent upstream: incoming forwarding fields kept only from trusted peers (one pass:
    every request takes it)."""
    trusted = policy.trusts(peer_ip)
    out: Headers = []
    chain: list[bytes] = []  # the X-Forwarded-For values a trusted peer handed us, then the peer
    previous: list[bytes] = []  # its Forwarded elements, then ours
    given: set[bytes] = set()
    for name, value in headers:
        if name not in _CLIENT_SET:
            out.append((name, value))
        elif trusted:
            given.add(name)
            if name == b"x-forwarded-for":
                chain.append(value)
            elif name == b"forwarded":
                previous.append(value)
            elif name != b"x-real-ip":
                out.append((name, value))  # X-Forwarded-Host and -Proto as the trusted proxy set them

    peer = peer_ip.encode()
    chain.append(peer)
    out.append((b"x-forwarded-for", b", ".join(chain)))
    out.append((b"x-real-ip", client_ip(peer_ip, headers, policy).encode() if trusted else peer))
    if b"x-forwarded-host" not in given:
        out.append((b"x-forwarded-host", host.encode()))
    if b"x-forwarded-proto" not in given:
        out.append((b"x-forwarded-proto", scheme.encode()))
    previous.append(f"for={_forwarded_node(peer_ip)};host={_forwarded_token(host)};proto={scheme}".encode())
    out.append((b"forwarded", b", ".join(previous)))
    return out
