"""The web UI on control's own app: server-rendered pages, a little vanilla JavaScript, live status by SSE."""

from __future__ import annotations

from quart import Quart

from kakuremichi.control.state import Settings
from kakuremichi.control.web import session, views


def install(app: Quart, settings: Settings) -> None:
    session.install(app, settings.data_dir)
    app.register_blueprint(views.blueprint)
