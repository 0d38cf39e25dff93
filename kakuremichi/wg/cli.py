"""`kakuremichi wg` / `python -m kakuremichi.wg`: key tools and diagnostics for the userspace WireGuard.

`genkey`, `pubkey` and `genpsk` read and write exactly what `wg` does, so keys move freely between
kakuremichi and standard WireGuard. `ping` brings up a device from a wg-quick file, with no root and
no TUN device, and pings through the tunnel.
"""

from __future__ import annotations

import argparse
import sys

from kakuremichi import logs
from kakuremichi.options import EnvArgumentParser
from kakuremichi.wg import keys


def _genkey(args) -> int:
    print(keys.encode(keys.generate_private()))
    return 0


def _genpsk(args) -> int:
    print(keys.encode(keys.generate_preshared()))
    return 0


def _pubkey(args) -> int:
    try:
        private = keys.decode(sys.stdin.read(), "private key on standard input")
    except keys.InvalidKey as exc:
        print(f"kakuremichi wg pubkey: {exc}", file=sys.stderr)
        return 1
    print(keys.encode(keys.public_from_private(private)))
    return 0


def _ping(args) -> int:
    import trio

    from kakuremichi.wg import ping
    from kakuremichi.wg.config import ConfigError

    try:
        return trio.run(ping.run, args.config, args.address, args.count, args.interval, args.timeout)
    except ConfigError as exc:
        print(f"kakuremichi wg ping: {exc}", file=sys.stderr)
        return 2
    except (OSError, ValueError) as exc:
        print(f"kakuremichi wg ping: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def build_parser(prog: str) -> argparse.ArgumentParser:
    parser = EnvArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    logs.add_arguments(parser)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("genkey", help="print a new private key").set_defaults(func=_genkey)
    sub.add_parser("pubkey", help="read a private key on stdin, print its public key").set_defaults(func=_pubkey)
    sub.add_parser("genpsk", help="print a new preshared key").set_defaults(func=_genpsk)

    p = sub.add_parser("ping", help="ICMP echo through the tunnel described by a wg-quick file",
                       description="Bring up a userspace WireGuard device from a wg-quick file (no root, "
                                   "no TUN) and ping ADDRESS from the [Interface] Address through it. "
                                   "Exits 0 if any reply came, 1 otherwise.")
    p.add_argument("--config", required=True, help="wg-quick configuration file")
    p.add_argument("-c", "--count", type=int, default=4, help="echo requests to send (default 4)")
    p.add_argument("-i", "--interval", type=float, default=1.0, help="seconds between requests (default 1)")
    p.add_argument("-W", "--timeout", type=float, default=5.0,
                   help="seconds to wait for the last reply (default 5)")
    p.add_argument("address", help="IPv4 address inside the tunnel")
    p.set_defaults(func=_ping)
    return parser


def main(argv: list[str] | None = None, prog: str = "kakuremichi wg") -> int:
    args = build_parser(prog).parse_args(argv)
    logs.setup(args.log_level, args.log_format)
    return args.func(args)
