"""`kakuremichi control` / `python -m kakuremichi.control`: run the control server."""

from __future__ import annotations

import argparse
import logging
import signal
import sys

import trio
from pony.orm.dbapiprovider import DatabaseError

from kakuremichi import command, datadirs, logs
from kakuremichi.control.allocation import parse_pool
from kakuremichi.control.datadir import SecretsKeyError
from kakuremichi.control.models import DatabaseUrlError, SchemaError
from kakuremichi.control.oidc import ProviderConfigError
from kakuremichi.control.sealing import UnsealError
from kakuremichi.control.server import serve
from kakuremichi.control.state import Settings
from kakuremichi.options import EnvArgumentParser, seconds
from kakuremichi.values import Endpoint, InvalidEndpoint, InvalidPortRange, PortRanges

logger = logging.getLogger("kakuremichi.control")


def _listen_address(text: str) -> str:
    try:
        return str(Endpoint.parse(text))
    except InvalidEndpoint as exc:
        raise argparse.ArgumentTypeError(f"{exc} (like 127.0.0.1:8000)") from None


def parser(prog: str | None = None) -> EnvArgumentParser:
    p = EnvArgumentParser(prog=prog, description="Run the kakuremichi control server: web UI and REST API for "
                          "agents, gateways and tunnels, and the /ws endpoint that pushes their configs. Log in to "
                          "the web UI with the admin token.")
    p.add_argument("--listen", type=_listen_address, default=Settings.listen, metavar="HOST:PORT",
                   help="address to serve HTTP and WebSocket on (use 0.0.0.0:8000 behind a TLS proxy)")
    p.add_argument("--data-dir", default=datadirs.default("control"),
                   help="directory for the default SQLite database and the web UI's session secret")
    p.add_argument("--database-url", default=None, metavar="URL",
                   help="sqlite:///path/control.sqlite or postgres://user:password@host/db (default: SQLite in "
                        "--data-dir)")
    p.add_secret("admin-token", "admin API token; without it one is generated on first start, printed once and "
                 "stored hashed")
    p.add_secret("secrets-key", "key (32 bytes, base64url) encrypting the TLS private keys in the database; "
                 "without it, secrets.key in --data-dir, made on first start. Controls sharing a database must "
                 "share it")
    p.add_argument("--heartbeat-interval", type=seconds, default=Settings.heartbeat_interval, metavar="SECONDS",
                   help="client ping interval; a client silent for two intervals is marked offline")
    p.add_argument("--subnet-pool", default=Settings.subnet_pool, metavar="CIDR",
                   help="IPv4 range tunnels get their /24 subnets from")
    p.add_argument("--acme-lease", type=seconds, default=Settings.acme_lease, metavar="SECONDS",
                   help="how long one gateway alone may order a domain's ACME certificate before another may "
                        "(it passes on at once when the holder goes offline)")
    p.add_secret("metrics-token", "a token Prometheus sends as Authorization: Bearer to read /metrics (the admin "
                 "token is accepted too)")
    p.add_argument("--metrics-public", action="store_true",
                   help="serve /metrics without any token (it names connected clients and counts failed logins)")
    p.add_argument("--public-ports", type=_port_ranges, default=Settings.public_ports, metavar="PORTS",
                   help="ports tcp and udp tunnels get their public port from, like 20000-29999 or "
                        "2222,20000-29999 (a tunnel may ask for one of them)")
    p.add_argument("--public-url", default="", metavar="URL",
                   help="control's URL as browsers reach it (https://control.example.com); needed for single "
                        "sign-on, whose logins return to URL/auth/callback (register that at the provider)")
    p.add_argument("--oidc-providers-file", default=None, metavar="PATH",
                   help='JSON list of OpenID Connect providers for tunnels in sso mode: [{"name", "issuer", '
                        '"clientId", "clientSecretFile" or "clientSecretEnv"}]')
    logs.add_arguments(p)
    return p


def _port_ranges(text: str) -> str:
    try:
        return str(PortRanges.parse(text))
    except InvalidPortRange as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    args = parser(prog).parse_args(argv)
    logs.setup(args.log_level, args.log_format)
    try:
        parse_pool(args.subnet_pool)
    except ValueError as exc:
        print(f"{prog or 'control'}: --subnet-pool: {exc}", file=sys.stderr)
        return 2
    settings = Settings(listen=args.listen, data_dir=args.data_dir, database_url=args.database_url,
                        admin_token=args.admin_token, heartbeat_interval=args.heartbeat_interval,
                        subnet_pool=args.subnet_pool, acme_lease=args.acme_lease, secrets_key=args.secrets_key,
                        secrets_key_source=args.secrets_key_source, metrics_token=args.metrics_token,
                        metrics_public=args.metrics_public, public_ports=args.public_ports,
                        public_url=args.public_url, oidc_providers_file=args.oidc_providers_file)
    failure: BaseException | None = None
    try:
        host, port = Endpoint.parse(args.listen).address  # before a new admin token is made and shown once
        command.check_can_listen(host, port, "control's HTTP and WebSocket", "--listen")
        command.freeze_imports()
        trio.run(_run, settings)
    except* (SchemaError, DatabaseUrlError, DatabaseError, OSError, SecretsKeyError, UnsealError,
             ProviderConfigError) as group:
        failure = group
        while isinstance(failure, BaseExceptionGroup):  # the nurseries wrap it
            failure = failure.exceptions[0]
    if failure is not None:
        what = "database: " if isinstance(failure, DatabaseError) else ""
        print(f"{prog or 'control'}: {what}{failure}".rstrip(), file=sys.stderr)
        return 1
    return 0


async def _run(settings: Settings) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(logs.write_in_batches)
            url = await nursery.start(serve, settings)
            logs.log(logger, logging.INFO, "control listening", url=url)
            async for signum in signals:
                logs.log(logger, logging.INFO, "stopping", signal=signal.Signals(signum).name)
                nursery.cancel_scope.cancel()
                break
