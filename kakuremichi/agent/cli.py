"""`kakuremichi agent` / `python -m kakuremichi.agent`: run an agent next to your private services.

It makes its own WireGuard key (kept in --data-dir, never sent anywhere), connects out to control with
its `agt_` API key, and from then on follows the config control pushes: which gateways to peer with,
and which local target each tunnel leads to. It needs no root and opens no inbound port.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import trio

from kakuremichi import command, logs, monitoring
from kakuremichi.agent.agent import Agent
from kakuremichi.agent import metrics
from kakuremichi.agent.configcache import ConfigCache
from kakuremichi.egress.localproxy import ProxyListen
from kakuremichi.options import EnvArgumentParser, add_heartbeat_interval
from kakuremichi.tunnel import TunnelNode
from kakuremichi.values import Endpoint
from kakuremichi.wg import keyfile, keys

logger = logging.getLogger("kakuremichi.agent")


def build_parser(prog: str) -> EnvArgumentParser:
    parser = EnvArgumentParser(prog=prog, description=__doc__.split("\n\n")[0],
                               epilog="Example: kakuremichi agent --control-url https://control.example.com "
                                      "--api-key-file /etc/kakuremichi/agent.key")
    parser.add_argument("--control-url", required=True, help="control server URL (http(s):// or ws(s)://)")
    parser.add_secret("api-key", "this agent's API key (agt_...), shown once at creation", required=True)
    parser.add_argument("--data-dir", default="kakuremichi-agent",
                        help="where the agent keeps its WireGuard private key")
    parser.add_argument("--wireguard-port", type=int, default=0,
                        help="local UDP port for WireGuard (default: any free port; only outbound is needed)")
    parser.add_argument("--socks-listen", type=_listen_address, default="127.0.0.1:1080",
                        help="host:port of the local SOCKS5 proxy, served while a tunnel has socksProxyEnabled; its "
                             "connections leave through a gateway")
    parser.add_argument("--http-proxy-listen", type=_listen_address, default="127.0.0.1:3128",
                        help="host:port of the local HTTP proxy (CONNECT and http:// URLs), served while a tunnel has "
                             "httpProxyEnabled")
    add_heartbeat_interval(parser)
    logs.add_arguments(parser)
    monitoring.add_arguments(parser)
    return parser


def _listen_address(text: str) -> tuple[str, int]:
    try:
        return Endpoint.parse(text).address
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


async def run(args) -> None:
    private = keyfile.load_or_create(Path(args.data_dir) / "wireguard.key")
    with command.listening("WireGuard (UDP)", args.wireguard_port, "--wireguard-port"):
        node = TunnelNode(private, listen_port=args.wireguard_port)
    agent = Agent(node, proxies=ProxyListen(socks=args.socks_listen, http=args.http_proxy_listen),
                  cache=ConfigCache(Path(args.data_dir) / "config.json"))
    client = agent.control_client(args.control_url, args.api_key, heartbeat=args.heartbeat_interval)
    logs.log(logger, logging.INFO, "agent starting", public_key=keys.encode(node.public_key),
             control=args.control_url)
    monitor = monitoring.Monitor("agent", node, client, metrics.AgentCollector(agent),
                                 lambda: {"configVersion": agent.config_version, "tunnels": metrics.tunnels(agent)},
                                 faults=lambda: [agent.proxies.faults])
    async with trio.open_nursery() as nursery:
        await nursery.start(monitor.run, args.metrics_listen, args.metrics_token, Path(args.data_dir))
        await nursery.start(agent.run)
        await nursery.start(client.run)


def main(argv: list[str] | None = None, prog: str = "kakuremichi agent") -> int:
    return command.run_client(prog, build_parser(prog).parse_args(argv), run, kind="an agent", key_prefix="agt_")
