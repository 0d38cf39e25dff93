"""`kakuremichi healthcheck`: the container image's HEALTHCHECK, one command for every role.

Control is healthy while its /healthz answers; a gateway while its HTTP port answers at all (any status
below 500: an unknown host's 404 is a gateway that serves); an agent once it holds a config from control
(its config.json). It prints what failed, so `podman inspect` shows why a container is unhealthy.
"""

from __future__ import annotations

import sys
import urllib.error
import urllib.request
from pathlib import Path

from kakuremichi.options import EnvArgumentParser

CONTROL_HEALTH = "http://127.0.0.1:8000/healthz"


def parser(prog: str | None = None) -> EnvArgumentParser:
    p = EnvArgumentParser(prog=prog, description="Exit 0 when this container's kakuremichi serves, 1 with the "
                          "reason when it does not: the image's HEALTHCHECK.")
    p.add_argument("--url", default=CONTROL_HEALTH,
                   help="HTTP URL that must answer with a status below 500 (a gateway: http://127.0.0.1:8080/)")
    p.add_argument("--file", default=None, metavar="PATH",
                   help="a file that must exist instead (an agent: /data/config.json, written once control "
                        "sent its config)")
    p.add_argument("--timeout", type=float, default=4.0, metavar="SECONDS", help="how long to wait for --url")
    return p


def check(url: str, file: str | None, timeout: float) -> str | None:
    """None when healthy, else what is wrong."""
    if file is not None:
        return None if Path(file).is_file() else f"{file} does not exist yet"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            status = response.status
    except urllib.error.HTTPError as error:
        status = error.code
    except (OSError, ValueError) as error:
        return f"{url}: {getattr(error, 'reason', error)}"
    return None if status < 500 else f"{url} answered {status}"


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    args = parser(prog).parse_args(argv)
    problem = check(args.url, args.file, args.timeout)
    if problem:
        print(f"unhealthy: {problem}", file=sys.stderr)
        return 1
    print("healthy")
    return 0
