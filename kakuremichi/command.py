"""Running a Trio program as a command: errors a user can fix become one clear line, Ctrl-C and SIGTERM
(`docker stop`) a clean exit."""

from __future__ import annotations

import errno
import gc
import logging
import signal
import socket
import sys
from contextlib import contextmanager

import trio

from kakuremichi import logs

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
PRIVILEGED_PORTS = 1024


class CannotListen(OSError):
    """A port this command was told to listen on cannot be bound; the message names the flag and the way out."""


def cannot_listen(exc: OSError, what: str, port: int, flag: str) -> CannotListen:
    """`exc` (from bind) as one line: what could not listen on which port, set by which flag, and what to do."""
    bind_error = exc.__cause__ if isinstance(exc.__cause__, OSError) else exc
    if bind_error.errno == errno.EADDRINUSE:
        advice = f"another process is listening on it: stop that one or choose another port with {flag}"
    elif bind_error.errno == errno.EACCES and port < PRIVILEGED_PORTS:
        advice = (f"ports below {PRIVILEGED_PORTS} need privileges: choose a port >= {PRIVILEGED_PORTS} with {flag} "
                  f"and map the public port to it (docker run -p {port}:{port + 8000}), or grant the process "
                  f"CAP_NET_BIND_SERVICE")
    elif bind_error.errno == errno.EADDRNOTAVAIL:
        advice = "that address is not on this machine: listen on one of its addresses, or on all of them"
    else:
        advice = f"choose another port with {flag}"
    return CannotListen(f"cannot listen for {what} on port {port} ({flag}): {bind_error.strerror or bind_error}; "
                        f"{advice}")


@contextmanager
def listening(what: str, port: int, flag: str):
    """Turn a bind's OSError inside the block into CannotListen naming `flag`."""
    try:
        yield
    except CannotListen:
        raise
    except OSError as exc:
        raise cannot_listen(exc, what, port, flag) from None


def check_can_listen(host: str | None, port: int, what: str, flag: str) -> None:
    """Raise CannotListen now, before anything is started or created, if TCP `host:port` cannot be bound (the
    same way trio and Hypercorn bind it: SO_REUSEADDR, every address `host` resolves to, all when None)."""
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror:
        return  # the listener itself reports an unresolvable host
    with listening(what, port, flag):
        for family, kind, proto, _, address in addresses:
            with socket.socket(family, kind, proto) as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind(address)


def _leaves(group: BaseExceptionGroup) -> list[BaseException]:
    out: list[BaseException] = []
    for exc in group.exceptions:
        out += _leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc]
    return out


def freeze_imports() -> None:
    """Call once started, before the main runs. What importing made (modules, classes, functions: most of the
    heap) lives as long as the process; frozen, the collector never walks it again, and its rare full
    collections pause a busy gateway worker about 20 ms instead of 40-50."""
    gc.freeze()


def run(name: str, function, *args) -> int:
    """trio.run(function, *args) for command `name`; returns the process exit status.

    OSError and ValueError (bad files, ports in use, unreachable hosts) print `name: message` and give 2;
    Ctrl-C gives 130 without a traceback, SIGTERM a clean stop with 0. Anything else is a bug and keeps
    its traceback.
    """
    status = 0
    freeze_imports()
    try:
        status = trio.run(_until_stopped, function, args) or 0
    except* KeyboardInterrupt:
        status = EXIT_INTERRUPTED
    except* (OSError, ValueError) as group:
        for exc in _leaves(group)[:1]:
            print(f"{name}: {exc}", file=sys.stderr)
        status = EXIT_USAGE
    return status


async def _until_stopped(function, args) -> int | None:
    """`function(*args)`, cancelled by SIGTERM, with log lines written in batches meanwhile."""
    status = None
    with trio.open_signal_receiver(signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(logs.write_in_batches)
            nursery.start_soon(_cancel_on_signal, signals, nursery.cancel_scope)
            status = await function(*args)
            nursery.cancel_scope.cancel()
    return status


async def _cancel_on_signal(signals, scope: trio.CancelScope) -> None:
    async for signum in signals:
        logs.log(logging.getLogger("kakuremichi"), logging.INFO, "stopping", signal=signal.Signals(signum).name)
        scope.cancel()
        return


def run_client(name: str, args, function, *extra, kind: str, key_prefix: str) -> int:
    """`run(name, function, args, *extra)` for a daemon that logs in to control as `kind` ("an agent"): a wrong
    kind of API key is refused before anything starts, with the way to get the right one."""
    if not args.api_key.startswith(key_prefix):
        print(f"{name}: --api-key must be {kind} key ({key_prefix}...); create {kind} in control to get one",
              file=sys.stderr)
        return EXIT_USAGE
    logs.setup(args.log_level, args.log_format)
    return run(name, function, args, *extra)
