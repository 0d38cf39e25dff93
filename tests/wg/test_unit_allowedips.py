"""The AllowedIPs table: longest-prefix match for IPv4 and IPv6, replacement, removal."""

from __future__ import annotations

import ipaddress
import random

import pytest

from kakuremichi.wg.allowedips import ANSWERS_KEPT, AllowedIPs, inner_length_and_source, packet_destination
from tests.wg.sansio_helpers import ipv4, ipv6


def ip(text: str) -> bytes:
    return ipaddress.ip_address(text).packed


@pytest.fixture
def table():
    t: AllowedIPs[str] = AllowedIPs()
    for net, owner in (("10.0.0.0/8", "eight"), ("10.1.0.0/16", "sixteen"), ("10.1.2.0/24", "twentyfour"),
                       ("10.1.2.3/32", "host"), ("0.0.0.0/0", "default4"),
                       ("fd00::/8", "v6-8"), ("fd00:1::/32", "v6-32"), ("fd00:1::1/128", "v6-host")):
        t.insert(net, owner)
    return t


@pytest.mark.parametrize("address,owner", [
    ("10.1.2.3", "host"), ("10.1.2.4", "twentyfour"), ("10.1.3.1", "sixteen"), ("10.2.0.0", "eight"),
    ("11.0.0.1", "default4"), ("255.255.255.255", "default4"), ("0.0.0.0", "default4"),
    ("fd00:1::1", "v6-host"), ("fd00:1::2", "v6-32"), ("fd00:2::1", "v6-8"), ("fe80::1", None),
    ("2001:db8::1", None),
])
def test_longest_prefix_wins(table, address, owner):
    assert table.lookup(ip(address)) == owner


def test_families_are_separate(table):
    table.remove_owner("default4")
    assert table.lookup(ip("11.0.0.1")) is None
    table.insert("::/0", "default6")
    assert table.lookup(ip("11.0.0.1")) is None  # an IPv6 default route does not catch IPv4
    assert table.lookup(ip("2001:db8::1")) == "default6"
    assert table.lookup(ip("::ffff:10.1.2.3")) == "default6"  # a v4-mapped v6 address is v6


def test_lookup_accepts_memoryview(table):
    packet = ipv4("10.0.0.1", "10.1.2.3")
    assert table.lookup(memoryview(packet)[16:20]) == "host"


def test_reinserting_a_prefix_moves_it_to_the_new_owner(table):
    table.insert("10.1.0.0/16", "other")
    assert table.lookup(ip("10.1.3.1")) == "other"
    assert table.lookup(ip("10.1.2.3")) == "host"
    assert ipaddress.ip_network("10.1.0.0/16") not in table.networks_of("sixteen")


def test_host_bits_are_masked(table):
    table.insert("192.168.1.77/24", "masked")
    assert table.lookup(ip("192.168.1.1")) == "masked"
    assert table.networks_of("masked") == [ipaddress.ip_network("192.168.1.0/24")]


def test_remove_owner_removes_only_its_prefixes(table):
    table.remove_owner("sixteen")
    assert table.lookup(ip("10.1.3.1")) == "eight"
    assert table.lookup(ip("10.1.2.4")) == "twentyfour"
    table.remove_owner("eight")
    table.remove_owner("default4")
    assert table.lookup(ip("10.2.0.0")) is None
    assert table.networks_of("eight") == []
    table.remove_owner("nobody")  # harmless


def test_replace_sets_exactly_the_given_networks(table):
    table.replace("host", ["172.16.0.0/12", "fd00:1::1/128"])
    assert table.lookup(ip("10.1.2.3")) == "twentyfour"
    assert table.lookup(ip("172.20.0.1")) == "host"
    assert sorted(map(str, table.networks_of("host"))) == ["172.16.0.0/12", "fd00:1::1/128"]


def test_owners_are_compared_by_identity():
    class Peer:
        def __eq__(self, other):
            return True  # a dataclass-like peer that compares equal to everything

        __hash__ = object.__hash__

    one, two = Peer(), Peer()
    t: AllowedIPs[Peer] = AllowedIPs()
    t.insert("10.0.0.0/8", one)
    t.insert("10.1.0.0/16", two)
    t.remove_owner(two)
    assert t.lookup(ip("10.1.0.1")) is one


def test_matches_a_brute_force_reference():
    rng = random.Random(7)
    t: AllowedIPs[int] = AllowedIPs()
    routes: dict[ipaddress.IPv4Network | ipaddress.IPv6Network, int] = {}
    for owner in range(300):
        if rng.random() < 0.5:
            net = ipaddress.ip_network((rng.getrandbits(32) & 0xFF0FFFFF | 0x0A000000, rng.randint(8, 32)),
                                       strict=False)
        else:
            net = ipaddress.ip_network((0xFD << 120 | rng.getrandbits(120), rng.randint(8, 128)), strict=False)
        t.insert(net, owner)
        routes[net] = owner
    for _ in range(2000):
        candidates = list(routes)
        base = rng.choice(candidates)
        address = ipaddress.ip_address(int(base.network_address) | rng.getrandbits(base.max_prefixlen - base.prefixlen)
                                       if base.prefixlen < base.max_prefixlen else base.network_address)
        matching = [n for n in routes if n.version == address.version and address in n]
        expected = routes[max(matching, key=lambda n: n.prefixlen)] if matching else None
        assert t.lookup(address.packed) == expected


def test_packet_header_helpers():
    v4 = ipv4("10.0.0.1", "10.0.0.2", b"abc")
    v6 = ipv6("fd00::1", "fd00::2", b"abcd")
    assert bytes(packet_destination(v4)) == ip("10.0.0.2") and bytes(packet_destination(v6)) == ip("fd00::2")
    length, source = inner_length_and_source(v4 + b"pad")
    assert length == 23 and bytes(source) == ip("10.0.0.1")
    length, source = inner_length_and_source(v6 + b"pad")
    assert length == 44 and bytes(source) == ip("fd00::1")
    for bad in (b"\x45" + bytes(18), b"\x60" + bytes(38), b"\x50" + bytes(60)):
        assert packet_destination(bad) is None and inner_length_and_source(bad) == (0, None)
    claims_less_than_its_header = bytearray(v4)
    claims_less_than_its_header[2:4] = (19).to_bytes(2, "big")
    assert inner_length_and_source(bytes(claims_less_than_its_header)) == (0, None)


def test_kept_answers_follow_every_change_of_the_table_and_stay_bounded():
    """Answers are kept per address until the table changes: a lookup after an insert, a move or a removal
    must see the table as it is now, and a flood of distinct addresses must not grow the memory."""
    t: AllowedIPs[str] = AllowedIPs()
    t.insert("10.0.0.0/8", "wide")
    address = ip("10.1.2.3")
    assert t.lookup(address) == "wide" and t.lookup(address) == "wide"
    t.insert("10.1.0.0/16", "narrow")
    assert t.lookup(address) == "narrow"
    t.insert("10.1.0.0/16", "moved")  # the same prefix, another owner
    assert t.lookup(address) == "moved"
    t.remove_owner("moved")
    assert t.lookup(address) == "wide"
    t.replace("wide", ["192.168.0.0/16"])
    assert t.lookup(address) is None
    assert t.lookup(memoryview(ip("192.168.1.1"))) == "wide"  # views are looked up, not kept
    for n in range(3 * ANSWERS_KEPT):
        t.lookup(n.to_bytes(4, "big"))
    assert len(t._answers) <= ANSWERS_KEPT
