"""A gateway on every core: `--workers N` runs N worker processes under one supervising process.

Python runs one core per process, so the gateway scales by processes, which share no mutable state but
through control. Each worker is a whole gateway with a WireGuard identity of its own (its key, UDP port
--wireguard-port + index and agent address file in the data directory), registered with control as a worker
of its gateway: control gives it an address in every tunnel's subnet and makes it a peer of every agent, as
it does for every gateway. The public HTTP(S) ports are shared (SO_REUSEPORT on Linux, SO_REUSEPORT_LB on
FreeBSD), so the kernel spreads the connections among the workers; certificates reach every worker as they reach every gateway (ACME leases
through control let one order at a time), and the data directory's files are written atomically, those made
locally under its lock (certs/store.py). Where the OS cannot spread a port's connections (Windows, macOS)
the gateway runs one worker, in its own process.

The supervisor binds nothing for long: it checks that the ports are free, starts the workers, starts again
one that exits (only that worker's connections are lost) with a growing delay, and stops them all on SIGTERM
or Ctrl-C. Their log lines go to its output, each with its `worker` field.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from pathlib import Path

import trio

from kakuremichi import command
from kakuremichi.gateway.listeners import PORT_SHARING
from kakuremichi.logs import log

logger = logging.getLogger("kakuremichi.gateway.workers")

SHARED_PORTS = PORT_SHARING is not None  # several processes can share one TCP port's connections
RESTART_DELAY = 0.5  # seconds before the first restart of a worker that exited; doubled up to RESTART_DELAY_MAX
RESTART_DELAY_MAX = 30.0
STABLE_RUN = 60.0  # a worker that ran this long is restarted after RESTART_DELAY again
ORPHAN_CHECK = 1.0  # seconds between a worker's looks at whether its supervisor is still there
SECRETS = ("api-key", "metrics-token")  # handed to workers in their environment, never on their command lines
SECRET_FLAGS = tuple(f"--{name}{suffix}" for name in SECRETS for suffix in ("", "-file"))


def cpu_count() -> int:
    """The CPUs this process may run on (--workers' default)."""
    if hasattr(os, "process_cpu_count"):  # Python 3.13
        return os.process_cpu_count() or 1
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0)) or 1
    return os.cpu_count() or 1


def why_one_worker(http_port: int) -> str | None:
    """Why the gateway must run in one process whatever --workers says, if it must."""
    if not SHARED_PORTS:
        return "this OS cannot spread a port's connections among processes"
    if not http_port:
        return "with --http-port 0 each process would listen on a port of its own"
    return None


def per_worker(path: Path, index: int) -> Path:
    """The file of worker `index` for what `path` holds for the gateway: worker 0 is the gateway itself, so one
    started again with --workers 1 keeps its identity."""
    return path if index == 0 else path.with_name(f"{path.stem}-worker{index}{path.suffix}")


def worker_port(port: int, index: int) -> int:
    """Worker `index`'s WireGuard UDP port (0, any free port, stays 0)."""
    return port + index if port else 0


def worker_command(argv: list[str], index: int) -> list[str]:
    """The command line of worker `index`: the gateway's own, without its secrets."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in SECRET_FLAGS:
            skip = True
        elif not arg.startswith(tuple(f"{flag}=" for flag in SECRET_FLAGS)):
            kept.append(arg)
    return [sys.executable, "-m", "kakuremichi.gateway", *kept, "--worker-index", str(index)]


def worker_environment(secrets: dict[str, str | None]) -> dict[str, str]:
    """The supervisor's environment with each secret (by flag name) as its resolved value, not its file."""
    names = {name: "KAKUREMICHI_" + name.upper().replace("-", "_") for name in secrets}
    environment = {k: v for k, v in os.environ.items() if k not in {f"{var}_FILE" for var in names.values()}}
    return {**environment, **{names[name]: value for name, value in secrets.items() if value is not None}}


def check_udp_ports(host: str | None, port: int, count: int) -> None:
    """Raise CannotListen now if one of the workers' WireGuard ports cannot be bound."""
    for index in range(count):
        what = "WireGuard (UDP)" + (f" of worker {index}" if index else "")
        with command.listening(what, worker_port(port, index), "--wireguard-port"):
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
                probe.bind((host or "0.0.0.0", worker_port(port, index)))


async def supervise(argv: list[str], count: int, secrets: dict[str, str | None]) -> int | None:
    """Run `count` workers of the gateway started with `argv` until cancelled; EXIT_USAGE if one cannot start.
    `secrets`: the resolved value of each of SECRETS, by name."""
    environment = worker_environment(secrets)
    failed: list[int] = []
    log(logger, logging.INFO, "starting gateway workers", workers=count)
    async with trio.open_nursery() as nursery:
        for index in range(count):
            nursery.start_soon(_keep_running, worker_command(argv, index), environment, index, failed,
                               nursery.cancel_scope)
    if failed:
        log(logger, logging.ERROR, "a gateway worker could not start: stopping (its error is above)", worker=failed[0])
        return command.EXIT_USAGE
    return None


async def _keep_running(args: list[str], environment: dict[str, str], index: int, failed: list[int],
                        everything: trio.CancelScope) -> None:
    """Worker `index`, started again whenever it exits; a usage error at its first start stops the gateway."""
    delay, first = RESTART_DELAY, True
    while True:
        started = trio.current_time()
        process = await trio.run_process(args, env=environment, check=False, stdin=None)
        if first and process.returncode == command.EXIT_USAGE:
            failed.append(index)
            everything.cancel()
            return
        first = False
        if trio.current_time() - started >= STABLE_RUN:
            delay = RESTART_DELAY
        log(logger, logging.WARNING, "gateway worker exited, starting it again", worker=index,
            status=process.returncode, restart_in=f"{delay:.1f}s")
        await trio.sleep(delay)
        delay = min(2 * delay, RESTART_DELAY_MAX)


async def exit_with_supervisor(scope: trio.CancelScope) -> None:
    """Cancel `scope` (stop this worker) once its supervisor is gone: one killed outright leaves no orphans."""
    supervisor = os.getppid()
    while os.getppid() == supervisor:
        await trio.sleep(ORPHAN_CHECK)
    log(logger, logging.WARNING, "gateway supervisor gone, worker stopping", supervisor=supervisor)
    scope.cancel()
