"""`kakuremichi gateway` / `python -m kakuremichi.gateway`: run a public gateway.

It makes its own WireGuard key (kept in --data-dir), connects to control with its `gtw_` API key,
reports its public WireGuard endpoint, and serves every tunnel's domain over HTTP and HTTPS, with
certificates from ACME (Let's Encrypt by default). Several gateways order each certificate once,
together through control, and all serve it. Run it unprivileged: in a container, map ports 80/443 to
--http-port/--https-port.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import trio

from kakuremichi import command, logs, monitoring
from kakuremichi.egress.policy import DestinationPolicy
from kakuremichi.gateway import metrics, workers
from kakuremichi.gateway.certs.acme import LETS_ENCRYPT, AcmeSettings
from kakuremichi.gateway.gateway import Gateway, Listen
from kakuremichi.options import EnvArgumentParser, add_heartbeat_interval
from kakuremichi.protocol import MAX_WORKERS
from kakuremichi.tunnel import TunnelNode
from kakuremichi.wg import keyfile, keys

logger = logging.getLogger("kakuremichi.gateway")


def build_parser(prog: str) -> EnvArgumentParser:
    parser = EnvArgumentParser(prog=prog, description=__doc__.split("\n\n")[0],
                               epilog="Example: kakuremichi gateway --control-url https://control.example.com "
                                      "--api-key-file /etc/kakuremichi/gateway.key --public-host gw1.example.com")
    parser.add_argument("--control-url", required=True, help="control server URL (http(s):// or ws(s)://)")
    parser.add_secret("api-key", "this gateway's API key (gtw_...), shown once at creation", required=True)
    parser.add_argument("--public-host", required=True,
                        help="host name or IP at which agents reach this gateway's WireGuard port")
    parser.add_argument("--data-dir", default="kakuremichi-gateway",
                        help="WireGuard key, certificates and ACME account")
    parser.add_argument("--wireguard-port", type=int, default=51820, help="UDP port for WireGuard")
    parser.add_argument("--listen-host", default=None, help="address for HTTP(S) listeners (default: all)")
    parser.add_argument("--http-port", type=int, default=80, help="public HTTP port")
    parser.add_argument("--https-port", type=int, default=443, help="public HTTPS port, 0 to disable")
    parser.add_argument("--acme-directory", default=LETS_ENCRYPT,
                        help="ACME directory URL; 'off' disables ACME (default: Let's Encrypt)")
    parser.add_argument("--acme-email", default=None, help="contact e-mail for the ACME account")
    parser.add_argument("--acme-ca-bundle", default=None, help="CA file for the ACME server's own HTTPS (test CAs)")
    parser.add_argument("--exit-allow-private", action="store_true",
                        help="let exit tunnels reach loopback, private, link-local and other non-public "
                             "addresses from this gateway (labs and tests only: it opens the gateway's networks "
                             "to every exit tunnel's agent)")
    parser.add_argument("--workers", type=worker_count, default=None, metavar="N",
                        help="worker processes sharing the HTTP(S) ports, each a WireGuard peer of its own for the "
                             "agents, worker i on UDP port --wireguard-port + i (one where the OS cannot spread a "
                             "port's connections among processes: Windows, macOS) "
                             f"(default: the number of CPUs, {workers.cpu_count()} here)")
    parser.add_argument("--worker-index", type=int, default=None, help=argparse.SUPPRESS)  # set by the supervisor
    add_heartbeat_interval(parser)
    logs.add_arguments(parser)
    monitoring.add_arguments(parser)
    return parser


def worker_count(text: str) -> int:
    """--workers: 1 to MAX_WORKERS (an argparse type)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value < MAX_WORKERS:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of workers from 1 to {MAX_WORKERS - 1}")
    return value


async def run(args, argv: list[str]) -> int | None:
    """The gateway: in this process with one worker, else the supervisor of its workers (workers.py)."""
    worker = args.worker_index
    if worker is None:  # the gateway itself, not one of its workers: the ports are free, or nothing starts
        for port, what, flag in ((args.http_port, "HTTP", "--http-port"), (args.https_port, "HTTPS", "--https-port")):
            if port:
                command.check_can_listen(args.listen_host, port, what, flag)
        count = args.workers or workers.cpu_count()  # None: not given, one per CPU
        single = workers.why_one_worker(args.http_port) if count > 1 else None
        if single and args.workers:  # asked for: say why not
            logs.log(logger, logging.INFO, "running one gateway worker", workers=args.workers, reason=single)
        count = 1 if single else count
        if count > 1:
            workers.check_udp_ports(None, args.wireguard_port, count)
            if args.metrics_listen:
                for index in range(count):
                    command.check_can_listen(args.metrics_listen[0], workers.worker_port(args.metrics_listen[1], index),
                                             "metrics" + (f" of worker {index}" if index else ""), "--metrics-listen")
            for index in range(count):  # a key file's error is the gateway's, not a worker's to restart over
                private_key(args, index)
            return await workers.supervise(argv, count, {"api-key": args.api_key, "metrics-token": args.metrics_token})
        worker = 0
    else:
        logs.label(worker=worker)
    await serve(args, worker)
    return None


async def serve(args, worker: int) -> None:
    """Worker `worker` of the gateway (0: the gateway itself), until cancelled."""
    data = Path(args.data_dir)
    port = workers.worker_port(args.wireguard_port, worker)
    with command.listening("WireGuard (UDP)", port, "--wireguard-port"):
        node = TunnelNode(private_key(args, worker), listen_port=port)
    acme = None if args.acme_directory == "off" else AcmeSettings(args.acme_directory, args.acme_email,
                                                                  args.acme_ca_bundle)
    listen = Listen(args.listen_host, args.http_port, args.https_port or None, acme, shared=args.worker_index is not None)
    gateway = Gateway(node, data, listen, DestinationPolicy(allow_private=args.exit_allow_private), worker=worker)
    if args.exit_allow_private:
        logs.log(logger, logging.WARNING, "exit tunnels may reach this gateway's private networks "
                                          "(--exit-allow-private)")
    endpoint = f"{args.public_host}:{node.listen_port}"
    client = gateway.control_client(args.control_url, args.api_key, endpoint, heartbeat=args.heartbeat_interval)
    logs.log(logger, logging.INFO, "gateway starting", public_key=keys.encode(node.public_key),
             endpoint=endpoint, control=args.control_url)
    monitor = monitoring.Monitor("gateway", node, client, metrics.GatewayCollector(gateway),
                                 lambda: {"configVersion": gateway.config_version, "tunnels": metrics.tunnels(gateway)},
                                 worker, faults=lambda: metrics.faults(gateway))
    listen_metrics = args.metrics_listen and (args.metrics_listen[0],
                                              workers.worker_port(args.metrics_listen[1], worker))
    async with trio.open_nursery() as nursery:
        if args.worker_index is not None:
            nursery.start_soon(workers.exit_with_supervisor, nursery.cancel_scope)
        await nursery.start(monitor.run, listen_metrics, args.metrics_token, data)
        await nursery.start(gateway.run)
        await nursery.start(client.run)


def private_key(args, worker: int) -> bytes:
    """Worker `worker`'s WireGuard key, made on its first start."""
    return keyfile.load_or_create(workers.per_worker(Path(args.data_dir) / "wireguard.key", worker))


def main(argv: list[str] | None = None, prog: str = "kakuremichi gateway") -> int:
    argv = sys.argv[1:] if argv is None else argv
    return command.run_client(prog, build_parser(prog).parse_args(argv), run, argv, kind="a gateway",
                              key_prefix="gtw_")
