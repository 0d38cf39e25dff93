"""Running a Trio program as a command: errors a user can fix become one clear line, Ctrl-C a clean exit."""

from __future__ import annotations

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
    Ctrl-C gives 130 without a traceback. Anything else is a bug and keeps its traceback.
    """
    status = 0
    try:
        status = trio.run(function, *args) or 0
    except* KeyboardInterrupt:
        status = EXIT_INTERRUPTED
    except* (OSError, ValueError) as group:
        for exc in _leaves(group)[:1]:
            print(f"{name}: {exc}", file=sys.stderr)
        status = EXIT_USAGE
    return status


def run_client(name: str, args, function, *, kind: str, key_prefix: str) -> int:
    """`run` for a daemon that logs in to control as `kind` ("an agent"): a wrong kind of API key is
    refused before anything starts, with the way to get the right one."""
    if not args.api_key.startswith(key_prefix):
        print(f"{name}: --api-key must be {kind} key ({key_prefix}...); create {kind} in control to get one",
              file=sys.stderr)
        return EXIT_USAGE
    logs.setup(args.log_level, args.log_format)
    return run(name, function, args)
