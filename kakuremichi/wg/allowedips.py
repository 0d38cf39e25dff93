"""Cryptokey routing: the AllowedIPs table mapping IP prefixes to peers (whitepaper §2).

One dict per (family, prefix length) keyed by the address's top bits: a lookup is a handful of C-level
dict probes, longest prefix first, instead of a Python-level trie walk. Every packet is looked up (its
destination on the way out, its source on the way in), and a node talks with few addresses, so the answers
for addresses given as bytes are kept until the table changes: one dict probe.
"""

from __future__ import annotations

import ipaddress
from typing import Generic, Iterable, TypeVar

T = TypeVar("T")
ANSWERS_KEPT = 4096  # distinct addresses; more (a peer sending from many inner sources) start the memory anew
_UNKNOWN = object()
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class AllowedIPs(Generic[T]):
    def __init__(self) -> None:
        # family bits (32/128) -> prefix length -> top bits -> owner
        self._tables: dict[int, dict[int, dict[int, T]]] = {32: {}, 128: {}}
        self._lengths: dict[int, list[int]] = {32: [], 128: []}
        self._answers: dict[bytes, T | None] = {}

    def insert(self, network: Network | str, owner: T) -> None:
        """Route `network` to `owner`; an identical prefix owned by someone else moves over, as in `wg set`."""
        net = ipaddress.ip_network(network, strict=False)
        bits = net.max_prefixlen
        by_len = self._tables[bits]
        table = by_len.setdefault(net.prefixlen, {})
        table[int(net.network_address) >> (bits - net.prefixlen)] = owner
        self._lengths[bits] = sorted(by_len, reverse=True)
        self._answers.clear()

    def remove_owner(self, owner: T) -> None:
        for bits, by_len in self._tables.items():
            for plen in list(by_len):
                table = by_len[plen]
                for key in [k for k, v in table.items() if v is owner]:
                    del table[key]
                if not table:
                    del by_len[plen]
            self._lengths[bits] = sorted(by_len, reverse=True)
        self._answers.clear()

    def replace(self, owner: T, networks: Iterable[Network | str]) -> None:
        self.remove_owner(owner)
        for net in networks:
            self.insert(net, owner)

    def networks_of(self, owner: T) -> list[Network]:
        out: list[Network] = []
        for bits, by_len in self._tables.items():
            cls = ipaddress.IPv4Network if bits == 32 else ipaddress.IPv6Network
            for plen, table in by_len.items():
                out += [cls((key << (bits - plen), plen)) for key, v in table.items() if v is owner]
        return out

    def lookup(self, address: bytes | memoryview) -> T | None:
        """The owner of the longest prefix containing `address` (4 or 16 raw bytes)."""
        kept = type(address) is bytes
        if kept:
            owner = self._answers.get(address, _UNKNOWN)
            if owner is not _UNKNOWN:
                return owner
        bits = 32 if len(address) == 4 else 128
        value = int.from_bytes(address, "big")
        by_len = self._tables[bits]
        owner = None
        for plen in self._lengths[bits]:
            owner = by_len[plen].get(value >> (bits - plen))
            if owner is not None:
                break
        if kept:
            answers = self._answers
            if len(answers) >= ANSWERS_KEPT:
                answers.clear()
            answers[address] = owner
        return owner


def packet_destination(packet: bytes | memoryview) -> bytes | memoryview | None:
    version = packet[0] >> 4
    if version == 4 and len(packet) >= 20:
        return packet[16:20]
    if version == 6 and len(packet) >= 40:
        return packet[24:40]
    return None


def inner_length_and_source(packet: bytes | memoryview) -> tuple[int, bytes | memoryview | None]:
    """The length a decrypted IP packet's header claims (so transport padding can be stripped) and its source
    address, read in one step on the receive path; (0, None) unless it holds a whole IPv4/IPv6 header."""
    version = packet[0] >> 4
    if version == 4 and len(packet) >= 20:
        length = int.from_bytes(packet[2:4], "big")
        return (length, packet[12:16]) if length >= 20 else (0, None)
    if version == 6 and len(packet) >= 40:
        return 40 + int.from_bytes(packet[4:6], "big"), packet[8:24]
    return 0, None
