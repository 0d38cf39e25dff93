"""Running a Trio program as a command: errors a user can fix become one clear line, Ctrl-C and SIGTERM
(`docker stop`) a clean exit."""

from __future__ import annotations

import logging
import signal
import sys

import trio

from kakuremichi import logs

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def _leaves(group: BaseExceptionGroup) -> list[BaseException]:
    out: list[BaseException] = []
    for exc in group.exceptions:
        out += _leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc]
    return out


def run(name: str, function, *args) -> int:
    """trio.run(function, *args) for command `name`; returns the process exit status.

    OSError and ValueError (bad files, ports in use, unreachable hosts) print `name: message` and give 2;
    Ctrl-C gives 130 without a traceback, SIGTERM a clean stop with 0. Anything else is a bug and keeps
    its traceback.
    """
    status = 0
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


def run_client(name: str, args, function, *, kind: str, key_prefix: str) -> int:
    """`run` for a daemon that logs in to control as `kind` ("an agent"): a wrong kind of API key is
    refused before anything starts, with the way to get the right one."""
    if not args.api_key.startswith(key_prefix):
        print(f"{name}: --api-key must be {kind} key ({key_prefix}...); create {kind} in control to get one",
              file=sys.stderr)
        return EXIT_USAGE
    logs.setup(args.log_level, args.log_format)
    return run(name, function, args)
