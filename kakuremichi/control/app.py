"""The Quart-Trio application: REST API, /ws, web UI, /healthz, /metrics and the OpenAPI document on one app."""

from __future__ import annotations

import logging

from quart import request
from quart_trio.wrappers.response import TrioResponse as Response
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from kakuremichi.control import api, auth, dist, openapi, presence, sso, web, websocket
from kakuremichi.control.metrics import client_statuses
from kakuremichi.control.api import json_response
from kakuremichi.control.state import ControlState, Settings, current
from kakuremichi.control.bodies import ApiError
from kakuremichi.control.web import views

logger = logging.getLogger("kakuremichi.control")
MAX_BODY = 1 << 20


def create_app(settings: Settings) -> QuartTrio:
    """Open the database and build the app; raises ValueError/SchemaError with a message for the operator."""
    state = ControlState(settings)
    app = QuartTrio("kakuremichi.control")
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY
    app.extensions["kakuremichi.control"] = state
    app.register_blueprint(api.blueprint)
    app.register_blueprint(websocket.blueprint)
    app.register_blueprint(sso.blueprint)
    app.register_blueprint(dist.blueprint)
    app.extensions["kakuremichi.dist"] = dist.Dist(settings.data_dir)
    web.install(app, settings)

    @app.before_serving
    async def start_background() -> None:
        presence.mark_stale_offline(state)
        app.add_background_task(presence.watch_database, state)

    @app.get("/healthz")
    async def healthz() -> Response:
        return json_response({"status": "ok", "configVersion": current().config_version()})

    @app.get("/metrics")
    async def metrics() -> Response:
        if not state.settings.metrics_public:  # it names clients and counts failed logins
            auth.require_bearer(request.headers.get("Authorization"), state.metrics_token_hash,
                                state.admin_token_hash, what="--metrics-token or the admin token")
        gauges = {("kakuremichi_control_clients_connected", (("role", role),)): float(count)
                  for role, count in state.connected_counts().items()}
        gauges["kakuremichi_control_config_version", ()] = float(state.config_version())
        gauges.update(client_statuses(state.db))
        return Response(state.metrics.render(gauges), content_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/api/openapi.json")
    async def openapi_document() -> Response:
        return json_response(openapi.DOCUMENT)

    @app.errorhandler(ApiError)
    async def api_error(error: ApiError) -> Response:
        response = json_response(error.body(), error.status)
        if error.status == 401:
            response.headers["WWW-Authenticate"] = "Bearer"
        return response

    @app.errorhandler(HTTPException)
    async def http_error(error: HTTPException) -> Response:
        if _for_a_browser():
            return await views.error_page(error.code or 500, error.name or "Error",
                                          "There is no such page here." if error.code == 404 else
                                          error.description or "")
        code = (error.name or "error").lower().replace(" ", "_")
        response = json_response({"error": error.description or error.name, "code": code, "details": {}},
                                 error.code or 500)
        for name, value in error.get_headers():  # Allow with 405
            if name.lower() != "content-type":
                response.headers[name] = value
        return response

    @app.errorhandler(Exception)
    async def unexpected(error: Exception) -> Response:
        logger.exception("unexpected error serving a request")
        return json_response({"error": "internal error; see the control log", "code": "internal", "details": {}}, 500)

    return app


def _for_a_browser() -> bool:
    """An error outside the API's, /ws's and /metrics' URLs, asked by a client that takes HTML: the web UI's page
    rather than the API's JSON."""
    return (not request.path.startswith(("/api/", "/ws", "/metrics"))
            and request.accept_mimetypes.best_match(["application/json", "text/html"]) == "text/html")
