"""Where an exit may connect: public internet addresses only, unless the operator allows private ones.

A gateway sits inside some network (a cloud VPC, a home LAN, a container host); an exit that reached
its loopback, private, link-local or metadata addresses would hand every agent a way into it. Names are
resolved here and every resulting address is checked; the caller connects to a checked address, never
to the name again, so a second DNS answer cannot slip a private address in (DNS rebinding).
"""

from __future__ import annotations

import ipaddress
import socket

import trio

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

NAT64 = ipaddress.ip_network("64:ff9b::/96")  # RFC 6052: IPv4 addresses reached through a NAT64
# IPv6 ranges that are not globally reachable (IANA special-purpose registry) but that `is_global` of
# older Pythons (3.11 before its 2024 updates) still calls global: the policy must not depend on the version
NOT_GLOBAL_IPV6 = tuple(ipaddress.ip_network(n) for n in (
    "::/96",  # IPv4-compatible (RFC 4291, deprecated): with sit0 up, Linux tunnels it to the IPv4 inside
    "::ffff:0:0:0/96",  # IPv4-translated (RFC 2765): a local SIIT translator would reach the IPv4 inside
    "64:ff9b:1::/48",  # local-use NAT64 (RFC 8215): an operator's own translator, into its own networks
    "fec0::/10",  # site-local (RFC 3879, deprecated): still some networks' internal addressing
    "5f00::/16",  # SRv6 SIDs (RFC 9602)
    "3fff::/20",  # documentation (RFC 9637)
))


class Refused(Exception):
    """The destination is not allowed by the exit policy (SOCKS5 reply 0x02)."""


def embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for (mapped, NAT64, 6to4, Teredo client), if any."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in NAT64:
        return ipaddress.IPv4Address(address.packed[-4:])
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    return None


def is_public(address: IPAddress) -> bool:
    """True for a globally routable unicast address (not loopback, private, link-local, CGNAT 100.64/10,
    documentation, benchmarking, reserved, unspecified, multicast; IPv6 alike, embedded IPv4 included)."""
    if address.is_multicast or not address.is_global:
        return False
    if address.version == 6:
        if any(address in network for network in NOT_GLOBAL_IPV6):
            return False
        inner = embedded_ipv4(address)
        if inner is not None:
            return is_public(inner)
    return True


class DestinationPolicy:
    def __init__(self, *, allow_private: bool = False) -> None:
        self.allow_private = allow_private

    def permits(self, address: IPAddress) -> bool:
        return self.allow_private or is_public(address)

    async def resolve(self, host: str, port: int) -> list[tuple[int, tuple]]:
        """(family, sockaddr) pairs to try for host:port, each one permitted; raises Refused when none is,
        OSError (socket.gaierror) when the name does not resolve."""
        try:
            infos = await trio.socket.getaddrinfo(host, port, type=trio.socket.SOCK_STREAM)
        except UnicodeError:  # the idna codec's, for an empty or over-long label ("a..b")
            raise socket.gaierror(socket.EAI_NONAME, f"{host!r} is not a valid host name") from None
        permitted, refused = [], []
        for family, _type, _proto, _name, sockaddr in infos:
            address = ipaddress.ip_address(sockaddr[0].split("%", 1)[0])
            (permitted if self.permits(address) else refused).append((family, sockaddr))
        if not permitted:
            raise Refused(f"{host} resolves only to addresses the exit does not reach: "
                          + ", ".join(sorted({s[0] for _f, s in refused})))
        return list(dict.fromkeys(permitted))
