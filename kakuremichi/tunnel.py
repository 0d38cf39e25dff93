"""The data plane shared by gateways and agents: a WireGuard interface with a userspace IP stack on
top, reconfigured live as control pushes new configs.

`apply()` moves the node to a desired state (its tunnel addresses and its peers) by difference: peers
that stay keep their sessions, addresses that stay keep their connections, so a config change never
drops traffic it does not concern (rebuilding the stack on every change was a bug of the original).
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Iterable

import trio

from kakuremichi.logs import log
from kakuremichi.netstack import icmp
from kakuremichi.netstack.trio_stack import NetStack
from kakuremichi.wg import keys
from kakuremichi.wg.constants import REJECT_AFTER_TIME
from kakuremichi.wg.device import Device
from kakuremichi.wg.peer import Peer
from kakuremichi.wg.driver import WireGuardInterface, resolve_endpoint

logger = logging.getLogger("kakuremichi.tunnel")
PING_IDENTIFIER = 0x6B6D  # of the liveness pings a gateway sends its agents ("km")


@dataclass(frozen=True)
class PeerSpec:
    """One WireGuard peer as a config describes it (endpoint unresolved: a host name is fine)."""

    public_key: bytes
    allowed_ips: tuple[str, ...]
    endpoint: tuple[str, int] | None = None
    persistent_keepalive: int = 0
    needs_checksums: bool = True  # False: its stack skips them (protocol.AgentPeer.skips_checksums)


class TunnelNode:
    def __init__(self, private_key: bytes, *, listen_host: str = "0.0.0.0", listen_port: int = 0,
                 clock: Callable[[], float] | None = None) -> None:
        self.device = Device(private_key) if clock is None else Device(private_key, clock=clock)
        self.interface = WireGuardInterface(self.device, listen_host=listen_host, listen_port=listen_port)
        self.stack = NetStack(self.interface, [], peer_needs_checksums=self._needs_checksums)
        self.interface.attach(self.stack.receive_packets)
        self._applied: dict[bytes, PeerSpec] = {}

    @property
    def public_key(self) -> bytes:
        return self.device.public_key

    @property
    def listen_port(self) -> int:
        return self.interface.listen_port

    def now(self) -> float:
        """The clock every peer's timestamps are on."""
        return self.device.clock()

    def _peer_routing(self, address: str | int) -> Peer | None:
        return self.device.allowed_ips.lookup(ipaddress.ip_address(address).packed)

    def _needs_checksums(self, address: int) -> bool:
        """Whether the peer that IPv4 `address` is routed to checks TCP checksums (unknown: it may)."""
        peer = self._peer_routing(address)
        spec = None if peer is None else self._applied.get(peer.public_key)
        return spec is None or spec.needs_checksums

    def silence(self, address: str) -> float | None:
        """Seconds since the peer that `address` is routed to was last heard from (0 before it first was);
        None when no peer takes the address or that peer has no endpoint yet: nothing can reach it."""
        peer = self._peer_routing(address)
        if peer is None or peer.endpoint is None:
            return None
        heard = peer.stats.last_received
        return 0.0 if heard is None else self.now() - heard

    def ping(self, source: str, address: str, sequence: int = 0) -> None:
        """Send one ICMP echo request from our `source` to `address`: its peer's stack answers at once, so its
        reply (any packet, really) tells that the peer is alive."""
        self.interface.send_packets([icmp.echo_request(ipaddress.IPv4Address(source), ipaddress.IPv4Address(address),
                                                       PING_IDENTIFIER, sequence & 0xFFFF, b"")])

    def peer_alive(self, address: str) -> bool:
        """A session with the peer that `address` is routed to, which has been heard from within its lifetime."""
        peer = self._peer_routing(address)
        if peer is None or peer.current is None or peer.stats.last_received is None:
            return False
        return self.now() - peer.stats.last_received < REJECT_AFTER_TIME

    def hint_endpoint(self, public_key: bytes, endpoint: tuple[str, int] | None) -> None:
        """Where to reach a peer that has not been heard from since the start (a gateway recalls where its
        agents were): a handshake goes there at once, since the peer may hold a session from before the
        restart that this node forgot. A peer that was heard from keeps the address it was heard at."""
        peer = self.device.peers.get(public_key)
        if peer is not None and peer.endpoint is None and endpoint is not None:
            peer.endpoint = endpoint
            self.device.initiate_handshake(public_key)
            self.interface.flush()

    def endpoints(self) -> dict[bytes, tuple[str, int]]:
        """Each peer's current address, by public key, for the peers that have one."""
        return {key: tuple(peer.endpoint[:2]) for key, peer in self.device.peers.items() if peer.endpoint}

    def stats(self) -> dict:
        """What control shows about this node: per peer, when it last completed a handshake and traffic."""
        peers = {}
        for key, peer in self.device.peers.items():
            peers[keys.encode(key)] = {"lastHandshake": peer.stats.last_handshake, "rxBytes": peer.stats.rx_bytes,
                                       "txBytes": peer.stats.tx_bytes, "connected": peer.current is not None}
        return {"wireguardPort": self.listen_port, "peers": peers, "addresses": len(self.stack.addresses)}

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(self.interface.run)
            await nursery.start(self.stack.run)
            task_status.started(self)

    async def apply(self, addresses: Iterable[str], peers: Iterable[PeerSpec]) -> None:
        """Reach the desired addresses and peers, touching only what differs."""
        wanted = {str(a) for a in addresses}
        current = set(self.stack.addresses)
        for address in current - wanted:
            self.stack.remove_address(address)
        for address in sorted(wanted - current):
            self.stack.add_address(address)

        desired = {p.public_key: p for p in peers if p.public_key != self.public_key}
        for key in set(self._applied) - set(desired):
            self.device.remove_peer(key)
            log(logger, logging.INFO, "peer removed", peer=keys.encode(key)[:8])
        for key, spec in desired.items():
            if self._applied.get(key) == spec:
                continue
            endpoint = None
            if spec.endpoint is not None:
                try:
                    endpoint = await resolve_endpoint(*spec.endpoint)
                except OSError as exc:
                    log(logger, logging.WARNING, "peer endpoint unresolvable; waiting for it to reach us",
                        peer=keys.encode(key)[:8], error=str(exc))
            self.device.add_peer(key, endpoint=endpoint, allowed_ips=spec.allowed_ips,
                                 persistent_keepalive=spec.persistent_keepalive)
            log(logger, logging.INFO, "peer updated" if key in self._applied else "peer added",
                peer=keys.encode(key)[:8], allowed_ips=",".join(spec.allowed_ips),
                endpoint=f"{spec.endpoint[0]}:{spec.endpoint[1]}" if spec.endpoint else "-")
        self._applied = desired
        self.interface.flush()
