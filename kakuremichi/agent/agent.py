"""The agent's data plane: tunnel connections arriving on the netstack go to their tunnel's target.

Each tunnel has its own address in its own subnet, so the address a gateway connected to names the
tunnel; the agent needs no header parsing and carries any TCP protocol (HTTP, WebSocket, gRPC).
"""

from __future__ import annotations

import functools
import itertools
import logging

import trio

from kakuremichi.agent.configcache import ConfigCache
from kakuremichi.agent.metrics import TunnelCounts
from kakuremichi.agent.probes import Probes
from kakuremichi.agent.targets import connect
from kakuremichi.agent.udpflows import UdpForwarder
from kakuremichi.controlclient import ControlClient
from kakuremichi.egress.dialer import ExitDialer
from kakuremichi.egress.localproxy import LocalProxies, ProxyListen
from kakuremichi.logs import log
from kakuremichi.pipe import splice
from kakuremichi.protocol import TUNNEL_PORT, AgentConfig
from kakuremichi.tunnel import PeerSpec, TunnelNode
from kakuremichi.values import Endpoint, Target
from kakuremichi.wg import keys

logger = logging.getLogger("kakuremichi.agent")
_ids = itertools.count(1)
# Like Linux's somaxconn: a burst of new tunnel connections must wait to be accepted, not be reset (with
# the stack's default of 128, 116 of 3,000 connections opened at once through a gateway got a 502).
TUNNEL_BACKLOG = 4096


class Agent:
    def __init__(self, node: TunnelNode, *, connect_timeout: float = 10.0, proxies: ProxyListen | None = None,
                 cache: ConfigCache | None = None) -> None:
        """`cache`: where the last config from control is kept, and served from at start."""
        self.node = node
        self.cache = cache
        self.proxies = LocalProxies(ExitDialer(node), proxies)
        self.connect_timeout = connect_timeout
        self.targets: dict[str, tuple[str, Target]] = {}  # agent address -> (domain, target)
        self.config_version = 0
        self._active: dict[trio.CancelScope, tuple[str, Target]] = {}  # running splice -> (address, target)
        self.counts = TunnelCounts()  # per tunnel, for the metrics
        self.udp = UdpForwarder(node.stack)  # udp tunnels
        self.probes = Probes()  # health checks of its backends' targets

    @property
    def active_connections(self) -> int:
        return len(self._active)

    def control_client(self, url: str, api_key: str, **options) -> ControlClient:
        """The link to control this agent follows (`options` go to ControlClient)."""
        client = ControlClient(url, api_key, "agent", keys.encode(self.node.public_key), on_config=self.apply,
                               stats=self.stats, **options)
        self.probes.report, client.on_connected = client.send, self.probes.resend
        return client

    def stats(self) -> dict:
        return {**self.node.stats(), "configVersion": self.config_version, "tunnels": len(self.targets),
                "activeConnections": self.active_connections,
                "udpFlows": self.udp.flows, "udpRefused": self.udp.refused}

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(self.node.run)
            await nursery.start(self.proxies.run)
            await nursery.start(self.udp.run)
            await nursery.start(self.probes.run)
            await nursery.start(functools.partial(self.node.stack.serve_tcp, self._handle, TUNNEL_PORT,
                                                  backlog=TUNNEL_BACKLOG))
            saved = self.cache.load() if self.cache is not None else None
            if saved is not None:  # until control answers, which may be never
                log(logger, logging.INFO, "serving the last config saved from control", version=saved.version)
                await self.apply(saved, save=False)
            task_status.started(self)

    async def apply(self, config: AgentConfig, *, save: bool = True) -> None:
        """Adopt a pushed config: gateways as peers, tunnel addresses, address → target mappings."""
        # the protocol decoder checked every target and endpoint: these parses cannot fail
        targets = {tunnel.agent_ip: (tunnel.domain, Target.parse(tunnel.target))
                   for tunnel in config.tunnels if tunnel.enabled and tunnel.protocol != "udp"}
        peers = [PeerSpec(keys.decode(gateway.public_key), tuple(gateway.allowed_ips),
                          Endpoint.parse(gateway.endpoint).address, gateway.persistent_keepalive,
                          not gateway.skips_checksums)
                 for gateway in config.gateways]
        self.targets = targets
        for scope, (address, target) in list(self._active.items()):
            entry = targets.get(address)
            if entry is None or entry[1] != target:
                scope.cancel()  # re-targeted, disabled or deleted: its connections must not linger
        await self.node.apply(config.addresses, peers)
        await self.proxies.update(config.tunnels)
        await self.udp.update(config.tunnels)
        self.probes.update(config.tunnels)
        self.config_version = config.version
        if save and self.cache is not None:
            try:
                self.cache.save(config)
            except OSError as exc:  # applied all the same: only a start without control would miss it
                log(logger, logging.WARNING, "cannot save the config for starts without control",
                    path=str(self.cache.path), error=exc.strerror or str(exc))
        log(logger, logging.INFO, "config applied", version=config.version, tunnels=len(targets),
            gateways=len(peers))

    async def _handle(self, stream) -> None:
        conn = next(_ids)
        local_ip = stream.local_address[0]
        gateway_ip = stream.remote_address[0]
        entry = self.targets.get(local_ip)
        if entry is None:
            log(logger, logging.WARNING, "connection for no enabled tunnel", id=conn, address=local_ip)
            stream.abort()
            return
        domain, target = entry
        try:
            upstream = await connect(target, self.connect_timeout)
        except OSError as exc:
            # a reset tells the gateway at once, so the user gets a 502 instead of a hang
            log(logger, logging.WARNING, "local target unreachable", id=conn, domain=domain, target=str(target),
                error=exc.strerror or str(exc))
            self.counts.unreachable(domain)
            stream.abort()
            return
        if self.targets.get(local_ip) != entry:  # the tunnel changed while we were connecting
            await trio.aclose_forcefully(upstream)
            stream.abort()
            return
        self.counts.opened(domain)
        with trio.CancelScope() as scope:
            self._active[scope] = (local_ip, target)
            try:
                sent, received = await splice(stream, upstream)
                self.counts.finished(domain, sent, received)
                log(logger, logging.DEBUG, "tunnel connection done", id=conn, domain=domain, gateway=gateway_ip,
                    bytes_to_target=sent, bytes_from_target=received)
            finally:
                del self._active[scope]
        if scope.cancelled_caught:
            log(logger, logging.INFO, "tunnel connection closed by a config change", id=conn, domain=domain)
