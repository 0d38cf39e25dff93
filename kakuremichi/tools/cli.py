"""`kakuremichi wg` / `python -m kakuremichi.tools`: key tools and diagnostics for the userspace WireGuard.

`genkey`, `pubkey` and `genpsk` read and write exactly what `wg` does, so keys move freely between
kakuremichi and standard WireGuard. `ping`, `forward` and `expose` bring up a device from a wg-quick
file, with no root and no TUN device, and ping or carry TCP through the tunnel.
"""

from __future__ import annotations

import argparse
import sys

from kakuremichi import command, logs
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
    from kakuremichi.tools import ping

    return command.run("kakuremichi wg ping", ping.run, args.config, args.address, args.count, args.interval,
                       args.timeout)


def _portmap(args) -> int:
    """`forward` and `expose`: parse the mappings, then carry connections until Ctrl-C."""
    from kakuremichi.tools import portmap

    parse, serve = ((portmap.parse_forward, portmap.forward) if args.command == "forward"
                    else (portmap.parse_expose, portmap.expose))

    async def main() -> None:
        await serve(args.config, [parse(m) for m in args.mapping])

    return command.run(f"kakuremichi wg {args.command}", main)


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
    p.add_argument("-c", "--count", type=int, default=4, help="echo requests to send")
    p.add_argument("-i", "--interval", type=float, default=1.0, help="seconds between requests")
    p.add_argument("-W", "--timeout", type=float, default=5.0,
                   help="seconds to wait for the last reply")
    p.add_argument("address", help="IPv4 address inside the tunnel")
    p.set_defaults(func=_ping)

    p = sub.add_parser("forward", help="carry local TCP ports through the tunnel",
                       description="Listen on local TCP ports; each connection is carried through the "
                                   "userspace tunnel to an address inside it. Runs until Ctrl-C.")
    p.add_argument("--config", required=True, help="wg-quick configuration file")
    p.add_argument("mapping", nargs="+", metavar="[LOCAL_HOST:]PORT=TUNNEL_ADDR:PORT",
                   help="e.g. 127.0.0.1:8080=10.0.0.2:80")
    p.set_defaults(func=_portmap)

    p = sub.add_parser("expose", help="serve local TCP targets on our address inside the tunnel",
                       description="Accept TCP on the [Interface] Address inside the tunnel; each "
                                   "connection goes to a local target. Runs until Ctrl-C.")
    p.add_argument("--config", required=True, help="wg-quick configuration file")
    p.add_argument("mapping", nargs="+", metavar="TUNNEL_PORT=LOCAL_HOST:PORT", help="e.g. 80=127.0.0.1:3000")
    p.set_defaults(func=_portmap)
    return parser


def main(argv: list[str] | None = None, prog: str = "kakuremichi wg") -> int:
    args = build_parser(prog).parse_args(argv)
    logs.setup(args.log_level, args.log_format)
    return args.func(args)
