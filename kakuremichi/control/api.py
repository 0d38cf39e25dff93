"""The admin REST API: agents, gateways and tunnels, behind the admin bearer token.

Each handler reads the request and answers with what kakuremichi.control.services does (the web UI calls the
same functions), as JSON.
"""

from __future__ import annotations

import json
from typing import Any

from quart import Blueprint, request
from quart_trio.wrappers.response import TrioResponse as Response

from kakuremichi.control import auth, services, validation as v
from kakuremichi.control.state import current
from kakuremichi.control.validation import ApiError

blueprint = Blueprint("api", __name__, url_prefix="/api")


@blueprint.before_request
async def require_admin() -> None:
    auth.require_bearer(request.headers.get("Authorization"), current().admin_token_hash, what="the admin token kma_…")


async def _body() -> Any:
    raw = await request.get_data()
    try:
        return json.loads(raw or b"null")
    except ValueError as exc:
        raise ApiError(400, "invalid_json", f"the request body is not JSON: {exc}") from None


def json_response(data: Any, status: int = 200) -> Response:
    return Response(json.dumps(data), status=status, content_type="application/json")


def _routes(kind: str) -> None:
    """List/create/get/update/delete (and rotate-key for agents and gateways) of one kind."""
    base = f"/{kind}s"

    async def list_items() -> Response:
        limit, offset = v.page(request.args)
        return json_response(services.page(current(), kind, limit, offset))

    async def post() -> Response:
        return json_response(services.create(current(), kind, await _body()), 201)

    async def get(item_id: str) -> Response:
        return json_response(services.get(current(), kind, item_id))

    async def patch(item_id: str) -> Response:
        return json_response(services.update(current(), kind, item_id, await _body()))

    async def delete(item_id: str) -> Response:
        services.delete(current(), kind, item_id)
        return Response(status=204)

    async def rotate_key(item_id: str) -> Response:
        return json_response(services.rotate_client_key(current(), kind, item_id))

    routes = [(base, list_items, ["GET"]), (base, post, ["POST"]), (base + "/<item_id>", get, ["GET"]),
              (base + "/<item_id>", patch, ["PATCH"]), (base + "/<item_id>", delete, ["DELETE"])]
    if kind != "tunnel":
        routes.append((base + "/<item_id>/rotate-key", rotate_key, ["POST"]))
    for path, view, methods in routes:
        blueprint.add_url_rule(path, f"{kind}_{view.__name__}", view, methods=methods)


for _kind in ("agent", "gateway", "tunnel"):
    _routes(_kind)
