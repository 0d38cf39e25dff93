"""The exit's destination policy: public addresses only, by default; names checked after resolving."""

from __future__ import annotations

import ipaddress
import socket

import pytest
import trio

from kakuremichi.egress.policy import DestinationPolicy, Refused, is_public

REFUSED = ["127.0.0.1", "127.8.9.10", "10.1.2.3", "172.16.0.1", "172.31.255.255", "192.168.1.1", "169.254.169.254",
           "100.64.0.1", "100.127.255.254", "224.0.0.1", "239.255.255.250", "240.0.0.1", "255.255.255.255",
           "0.0.0.0", "192.0.2.1", "198.18.0.1",
           "::1", "::", "fe80::1", "fc00::1", "fd12:3456::1", "ff02::1", "2001:db8::1",
           "::ffff:127.0.0.1", "::ffff:10.0.0.1", "64:ff9b::a00:1", "2002:c0a8:101::1",
           "::127.0.0.1", "::ffff:0:a00:1", "64:ff9b:1::a00:1", "fec0::1", "5f00::1", "3fff::1"]
ALLOWED = ["8.8.8.8", "1.1.1.1", "93.184.216.34", "100.128.0.1", "172.32.0.1", "2606:4700:4700::1111",
           "2a00:1450:4001::1", "::ffff:8.8.8.8", "64:ff9b::808:808"]


@pytest.mark.parametrize("address", REFUSED)
def test_refused_ranges(address):
    assert not is_public(ipaddress.ip_address(address))
    assert not DestinationPolicy().permits(ipaddress.ip_address(address))
    assert DestinationPolicy(allow_private=True).permits(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", ALLOWED)
def test_public_addresses_allowed(address):
    assert is_public(ipaddress.ip_address(address))


def test_resolving():
    async def main():
        policy = DestinationPolicy()
        assert await policy.resolve("93.184.216.34", 443) == [(trio.socket.AF_INET, ("93.184.216.34", 443))]
        with pytest.raises(Refused, match="127.0.0.1"):
            await policy.resolve("localhost", 80)  # a name resolving to a private address
        with pytest.raises(Refused):
            await policy.resolve("10.0.0.1", 80)
        with pytest.raises(Refused):
            await policy.resolve("::1", 80)
        for name in ("a..b", "a" * 64 + ".test"):  # the idna codec's UnicodeError, made a resolver error
            with pytest.raises(socket.gaierror):
                await policy.resolve(name, 80)
        allowed = await DestinationPolicy(allow_private=True).resolve("127.0.0.1", 80)
        assert allowed == [(trio.socket.AF_INET, ("127.0.0.1", 80))]

    trio.run(main)
