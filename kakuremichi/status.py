"""`kakuremichi status`: what a running agent or gateway sees (its control link, WireGuard peers, tunnels and
last warnings), read from the status socket it keeps in its data directory (0600: run it as the daemon's user),
or from its `--metrics-listen` address with `--metrics-url`.

A gateway with several workers has one socket per worker; each is shown.
"""

from __future__ import annotations

import json
import socket
import sys
import time
from pathlib import Path

import httpx

from kakuremichi.monitoring import STATUS_SOCKET
from kakuremichi.options import EnvArgumentParser

DEFAULT_DATA_DIRS = ("kakuremichi-agent", "kakuremichi-gateway")  # the daemons' own defaults
TIMEOUT = 5.0


class Unreachable(Exception):
    """No status could be read from where the user pointed."""


def build_parser(prog: str) -> EnvArgumentParser:
    parser = EnvArgumentParser(prog=prog, description=__doc__.split("\n\n")[0],
                               epilog="Example: kakuremichi status --data-dir /var/lib/kakuremichi-agent")
    parser.add_argument("--data-dir", action="append", default=None, metavar="DIR",
                        help="the --data-dir of the agent or gateway (repeatable; default: "
                             f"{' and '.join(DEFAULT_DATA_DIRS)} in the current directory, those present)")
    parser.add_argument("--metrics-url", default=None, metavar="URL",
                        help="read http://HOST:PORT/status of the daemon's --metrics-listen instead")
    parser.add_secret("metrics-token", "the daemon's --metrics-token, for --metrics-url")
    parser.add_argument("--json", action="store_true", help="print the status documents as JSON, one per line")
    return parser


def read_socket(path: Path) -> dict:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(TIMEOUT)
        try:
            sock.connect(str(path))
        except OSError as exc:
            raise Unreachable(f"cannot connect to {path}: {exc.strerror or exc} (is the daemon running, "
                              f"as this user?)") from None
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return json.loads(b"".join(chunks))


def read_url(url: str, token: str | None) -> dict:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    try:
        response = httpx.get(url.rstrip("/") + ("" if url.rstrip("/").endswith("/status") else "/status"),
                             headers=headers, timeout=TIMEOUT)
    except httpx.HTTPError as exc:
        raise Unreachable(f"cannot read {url}: {exc}") from None
    if response.status_code == 401:
        raise Unreachable(f"{url} wants a token: give the daemon's --metrics-token with KAKUREMICHI_METRICS_TOKEN "
                          f"or --metrics-token-file")
    if response.status_code != 200:
        raise Unreachable(f"{url} answered {response.status_code}: is it a kakuremichi --metrics-listen address?")
    return response.json()


def sockets(data_dirs: list[str] | None) -> list[Path]:
    """Every status socket in the data directories given (or the default ones present)."""
    if data_dirs is None:
        data_dirs = [d for d in DEFAULT_DATA_DIRS if Path(d).is_dir()]
        if not data_dirs:
            raise Unreachable(f"no {' or '.join(DEFAULT_DATA_DIRS)} here: give the daemon's data directory with "
                              f"--data-dir")
    found = []
    for data_dir in data_dirs:
        paths = sorted(Path(data_dir).glob("status*.sock"), key=lambda p: (len(p.name), p.name))
        if not paths:
            raise Unreachable(f"no {STATUS_SOCKET} in {data_dir}: is an agent or gateway running with "
                              f"--data-dir {data_dir}?")
        found += paths
    return found


def render(status: dict) -> str:
    """The status document for a person."""
    now = status.get("time", time.time())
    worker = f" worker {status['worker']}" if status.get("worker") else ""
    control = status["control"]
    lines = [f"{status['role']}{worker} (pid {status['pid']}), WireGuard key {status['publicKey']} on UDP port "
             f"{status['wireguardPort']}, config version {status.get('configVersion', '-')}",
             f"  control  {control['url']}: {'connected' if control['connected'] else 'NOT CONNECTED'}"]
    if control.get("lastError"):
        lines.append(f"           last failure {_ago(now, control['lastError']['time'])}: "
                     f"{control['lastError']['reason']}")
    lines.append(f"  peers    {len(status['peers'])}")
    for peer in status["peers"]:
        handshake = "never" if peer["lastHandshake"] is None else _ago(now, peer["lastHandshake"])
        lines.append(f"    {peer['publicKey']}  {peer['endpoint'] or 'no endpoint'}  "
                     f"{'session' if peer['session'] else 'no session'}, handshake {handshake}, "
                     f"rx {peer['rxBytes']} B, tx {peer['txBytes']} B")
    lines.append(f"  tunnels  {len(status['tunnels'])}")
    for tunnel in status["tunnels"]:
        if status["role"] == "agent":
            lines.append(f"    {tunnel['domain']} -> {tunnel['target']}  (address {tunnel['address']}, "
                         f"{tunnel['activeConnections']} open, {tunnel['connections']} relayed)")
        else:
            state = "enabled" if tunnel["enabled"] else "disabled"
            state += ", agent stopped" if tunnel["agentStopped"] else ""
            lines.append(f"    {tunnel['domain']} -> agent {tunnel['agentAddress']}  ({state}, "
                         f"{tunnel['activeRequests']} in flight, {tunnel['requests']} requests)")
    if status["problems"]:
        lines.append("  last warnings and errors")
        for problem in status["problems"][-10:]:
            lines.append(f"    {_ago(now, problem['time'])} {problem['level']}: {problem['message']}")
    return "\n".join(lines)


def _ago(now: float, then: float) -> str:
    return f"{max(0.0, now - then):.0f} s ago"


def main(argv: list[str] | None = None, prog: str = "kakuremichi status") -> int:
    args = build_parser(prog).parse_args(argv)
    try:
        documents = ([read_url(args.metrics_url, args.metrics_token)] if args.metrics_url
                     else [read_socket(path) for path in sockets(args.data_dir)])
    except Unreachable as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 1
    for document in documents:
        print(json.dumps(document) if args.json else render(document))
    return 0
