"""The gateway daemon's core: public HTTP(S) listeners, the proxy, certificates, and the tunnel data
plane, all following the config control pushes.

The data plane never depends on control being up: the last applied config keeps serving while the
control connection is down or reconnecting.
"""

from __future__ import annotations

import base64
import errno
import logging
from dataclasses import dataclass, field
from pathlib import Path

import trio

from kakuremichi.access.policy import AccessPolicy
from kakuremichi.controlclient import ControlClient
from kakuremichi.egress.exitserver import ExitServer
from kakuremichi.egress.policy import DestinationPolicy
from kakuremichi.gateway.certs.acme import AcmeSettings
from kakuremichi.gateway.certs.challenges import ChallengeStore
from kakuremichi.gateway.certs.manager import CertificateManager
from kakuremichi.gateway.certs.store import CertStore
from kakuremichi.gateway.certs.sync import CertificateSync
from kakuremichi.gateway.endpoints import EndpointMemory
from kakuremichi.gateway.http.proxy import ProxySettings, open_proxy
from kakuremichi.gateway.http.upstream import EXCHANGE_KEEPALIVE, PoolLimits
from kakuremichi.gateway.listeners import serve_http, serve_https
from kakuremichi.gateway.logins import LoginReports
from kakuremichi.gateway.ports import PortListeners
from kakuremichi.gateway.portbackends import balancer_name, port_addresses
from kakuremichi.gateway.backends import Backends, Liveness, route_of
from kakuremichi.gateway.routes import Route, RouteTable
from kakuremichi.gateway.workers import per_worker
from kakuremichi.logs import log
from kakuremichi.protocol import AGENT_KEEPALIVE, PORT_ERRORS, GatewayConfig
from kakuremichi.tunnel import PeerSpec, TunnelNode
from kakuremichi.wg import keys

logger = logging.getLogger("kakuremichi.gateway")

# An agent sends at least a keepalive every AGENT_KEEPALIVE seconds; silence for two of them (one may be
# lost) and a little more means it is gone, and a request gets its 502 at once, not after a connect timeout.
AGENT_SILENCE_LIMIT = 2 * AGENT_KEEPALIVE + 5


@dataclass
class Listen:
    host: str | None = None  # None: every interface
    http_port: int = 80
    https_port: int | None = 443  # None: no HTTPS listener
    acme: AcmeSettings | None = None  # None: no ACME (self-signed / custom certificates only)
    shared: bool = False  # the ports are shared with the gateway's other worker processes (workers.py)
    proxy: ProxySettings = field(default_factory=ProxySettings)
    pool: PoolLimits = field(default_factory=PoolLimits)


class Gateway:
    def __init__(self, node: TunnelNode, state_dir: str | Path, listen: Listen,
                 exit_policy: DestinationPolicy | None = None, worker: int = 0) -> None:
        self.node = node
        self.worker = worker  # which of the gateway's worker processes this is (workers.py)
        self.listen = listen
        self.exit = ExitServer(node.stack, exit_policy)
        self.routes = RouteTable()
        self.challenges = ChallengeStore()
        self.certs = CertificateManager(CertStore(Path(state_dir)), self.challenges, listen.acme)
        self._sources: dict[str, str] = {}  # agent address -> our address in that tunnel's subnet
        endpoints = Path(state_dir) / "agent-endpoints.json"
        self.endpoints = EndpointMemory(per_worker(endpoints, worker),
                                        sorted(Path(state_dir).glob("agent-endpoints*.json")))  # every worker's
        self.liveness = Liveness(node, AGENT_SILENCE_LIMIT)
        self.backends = Backends(self.liveness)  # the choice among a route's backends
        self.liveness.on_down = self.backends.went_down
        self.config_version = 0
        self.http_ports: list[int] = []
        self.https_ports: list[int] = []
        self.proxy = None  # while serving: its requests and routes held are in the metrics
        self.ports = PortListeners(listen.host, listen.shared, self.dial_agent, node.stack,  # tcp/udp tunnels
                                   self.backends)
        self.logins = LoginReports()  # told to control: they open tcp/udp ports (loginTunnelId)

    def control_client(self, url: str, api_key: str, public_endpoint: str, **options) -> ControlClient:
        """The link to control this gateway follows: its configs, and certificates ordered together with the
        other gateways (`options` go to ControlClient)."""
        client = ControlClient(url, api_key, "gateway", keys.encode(self.node.public_key), public_endpoint,
                               on_config=self.apply, stats=self.stats, worker=self.worker, **options)
        sync = CertificateSync(self.certs, self.challenges, client)
        client.on_message, client.on_connected = sync.receive, sync.connected
        self.certs.coordinator = sync
        self.logins.control = client
        return client

    async def _dial(self, route: Route) -> trio.abc.Stream:
        return await self.dial_agent(route.address, route.port, route.domain)

    async def dial_agent(self, address: str, port: int, what: str) -> trio.abc.Stream:
        """A connection to `address:port` of a tunnel's agent (serving `what`), from our address in the tunnel."""
        silent = self.node.silence(address)
        if silent is None:
            # fail fast (502) instead of letting SYNs time out: the agent never reached this gateway
            raise OSError(errno.EHOSTUNREACH, f"the agent of {what} has not connected to this gateway")
        if silent > AGENT_SILENCE_LIMIT:
            raise OSError(errno.EHOSTUNREACH, f"the agent of {what} has been silent for {silent:.0f} s")
        stream = await self.node.stack.open_tcp_stream(address, port, local_address=self._sources.get(address))
        stream.set_keepalive(*EXCHANGE_KEEPALIVE)
        return stream

    def stats(self) -> dict:
        return {**self.node.stats(), "configVersion": self.config_version, "routes": len(self._sources),
                "exitConnections": self.exit.active_connections, "backendConnections": self.backends.stats(),
                PORT_ERRORS: dict(self.ports.errors), "portConnections": self.ports.active}

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        listen = self.listen
        async with trio.open_nursery() as nursery:
            await nursery.start(self.node.run)
            await nursery.start(self.exit.run)
            await nursery.start(self.ports.run)
            await nursery.start(self.logins.run)
            nursery.start_soon(self.endpoints.keep_saving, self.node)
            await nursery.start(self.liveness.run)
            if listen.https_port is not None:
                listen.proxy.https_port = listen.https_port
            async with open_proxy(self.routes, self._dial, listen.proxy, listen.pool, self.challenges,
                                  self.backends) as proxy:
                self.proxy = proxy
                proxy.on_login = self.logins.logged_in
                http = await nursery.start(serve_http, proxy, listen.http_port, listen.host, listen.shared)
                self.http_ports = [l.socket.getsockname()[1] for l in http]
                if listen.https_port is not None:
                    https = await nursery.start(serve_https, proxy, self.certs.context, listen.https_port,
                                                listen.host, listen.shared)
                    self.https_ports = [l.socket.getsockname()[1] for l in https]
                    await nursery.start(self.certs.run)
                log(logger, logging.INFO, "gateway serving", http=",".join(map(str, self.http_ports)),
                    https=",".join(map(str, self.https_ports)) or "off", wireguard=self.node.listen_port)
                task_status.started(self)
                await trio.sleep_forever()

    async def apply(self, config: GatewayConfig) -> None:
        """Adopt a pushed config: agents as peers, our tunnel addresses, and the route table."""
        routes = []
        sources = {}
        try:
            access_key = base64.urlsafe_b64decode(config.access_key) if config.access_key else b""
        except ValueError:  # then no session or share link opens a protected tunnel: it stays closed
            log(logger, logging.ERROR, "config has an unusable accessKey: protected tunnels stay closed")
            access_key = b""
        for r in config.routes:
            try:
                access = AccessPolicy.from_config(r.tunnel_id, r.access, access_key) if r.access else None
                routes.append(route_of(r, access))
            except ValueError as exc:
                log(logger, logging.ERROR, "route skipped", domain=r.domain, error=str(exc))
                continue
            for address in {r.agent_ip, *(b.address for b in r.backends or ())}:
                sources[address] = r.gateway_ip
        port_routes = list(config.ports or ())
        sources.update({a: r.gateway_ip for r in port_routes for a in (r.agent_ip, *port_addresses(r))})
        peers = [PeerSpec(keys.decode(p.public_key), tuple(p.allowed_ips), needs_checksums=not p.skips_checksums)
                 for p in config.peers]
        await self.node.apply(config.addresses, peers)
        for peer in peers:  # one not heard from since we started: try where the agent last was
            self.node.hint_endpoint(peer.public_key, self.endpoints.recall(peer.public_key))
        self._sources = sources
        self.liveness.watched = {b.route.address: sources[b.route.address] for route in routes
                                 if len(route.backends) > 1 for b in route.backends}
        self.liveness.watched.update({a: r.gateway_ip for r in port_routes if len(r.backends or ()) > 1
                                      for a in port_addresses(r)})
        self.backends.forget_others({route.domain for route in routes} | {balancer_name(r) for r in port_routes})
        self.exit.update(config.routes)
        self.routes.replace(routes)
        await self.ports.update(port_routes)
        self.certs.update_routes(routes)
        self.config_version = config.version
        log(logger, logging.INFO, "config applied", version=config.version, routes=len(routes),
            agents=len(peers), exits=sum(r.exit and r.enabled for r in config.routes))
