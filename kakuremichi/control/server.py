"""Run control on one port with Hypercorn's Trio worker, in-process (tests, `kakuremichi dev`) or from the CLI."""

from __future__ import annotations

from functools import partial

import logging

import hypercorn.config
import hypercorn.trio
import trio

from kakuremichi.control.app import create_app
from kakuremichi.control.state import Settings


async def serve(settings: Settings, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve until cancelled; `started` with the base URL (http://host:port, the real port when 0 was asked).

    A newly generated admin token is printed once on stdout, the only place it ever appears.
    """
    app = create_app(settings)
    token = app.extensions["kakuremichi.control"].new_admin_token
    if token:
        print(f"Admin token (shown once, store it safely; it is also the web UI password): {token}", flush=True)
    config = hypercorn.config.Config()
    config.bind = [settings.listen]
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")  # through our log format, once
    config.graceful_timeout = 1.0
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(partial(hypercorn.trio.serve, app, config))
        task_status.started(binds[0])
