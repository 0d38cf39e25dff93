"""Run control on one port with Hypercorn's Trio worker, in-process (tests, `kakuremichi dev`) or from the CLI."""

from __future__ import annotations

from functools import partial

import logging

import hypercorn.config
import hypercorn.trio
import trio
from hypercorn.protocol import ws_stream
from quart import Response, request
from werkzeug.exceptions import RequestEntityTooLarge

from kakuremichi import protocol
from kakuremichi.control.app import create_app
from kakuremichi.control.state import Settings


class AuthFrameLimitedBuffer(ws_stream.WebsocketBuffer):
    """Hypercorn's buffer of one WebSocket's incoming message, holding the first message (the client's auth
    frame, sent before anyone knows who it is) to protocol.AUTH_FRAME_MAX and every later one to the config's
    websocket_max_message_size. Over it, Hypercorn closes with 1009 as the bytes arrive, without keeping them.
    Hypercorn has one size for every message; this is the only place a connection's own limit can go."""

    def __init__(self, max_length: int) -> None:
        super().__init__(min(max_length, protocol.AUTH_FRAME_MAX))
        self.later_max_length = max_length

    def clear(self) -> None:  # called once a message is complete
        super().clear()
        self.max_length = self.later_max_length


ws_stream.WebsocketBuffer = AuthFrameLimitedBuffer  # WSStream builds its buffer from this module name
BODY_DRAIN_TIMEOUT = 10.0  # how long an answer given before its request's body arrived waits for that body


async def read_the_unread_body(response: Response) -> Response:
    """An answer given before the request's body arrived (a 401, 403, 405 …): Hypercorn keeps such a connection
    open but never answers its next request. Take the rest of the body first (what the view read is cached, and
    Quart's limit, app.MAX_BODY, bounds the rest), or, if it is too big or too slow, close the connection."""
    try:
        with trio.fail_after(BODY_DRAIN_TIMEOUT):
            await request.get_data()
    except (RequestEntityTooLarge, trio.TooSlowError):
        response.headers["Connection"] = "close"
    return response


async def serve(settings: Settings, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve until cancelled; `started` with the base URL (http://host:port, the real port when 0 was asked).

    A newly generated admin token is printed once on stdout, the only place it ever appears.
    """
    app = create_app(settings)
    app.after_request(read_the_unread_body)
    token = app.extensions["kakuremichi.control"].new_admin_token
    if token:
        print(f"Admin token (shown once, store it safely; it is also the web UI password): {token}", flush=True)
    config = hypercorn.config.Config()
    config.bind = [settings.listen]
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")  # through our log format, once
    config.graceful_timeout = 1.0
    config.websocket_max_message_size = protocol.FRAME_MAX  # Hypercorn's default, 16 MiB, for each of 10 queued
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(partial(hypercorn.trio.serve, app, config))
        task_status.started(binds[0])
