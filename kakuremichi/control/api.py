"""The admin REST API: agents, gateways and tunnels, behind the admin bearer token.

`ROUTES` is the one table of its operations: the app serves each with its view, and openapi.py documents each
with the bodies (kakuremichi.control.bodies) the view decodes and answers. Each view answers with what
kakuremichi.control.services does (the web UI calls the same functions), as JSON.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import msgspec
from quart import Blueprint, request
from quart_trio.wrappers.response import TrioResponse as Response

from kakuremichi.control import auth, bodies, dist, services
from kakuremichi.control.bodies import ApiError
from kakuremichi.control.state import current

blueprint = Blueprint("api", __name__, url_prefix="/api")


@blueprint.before_request
async def require_admin() -> None:
    auth.require_bearer(request.headers.get("Authorization"), current().admin_token_hash, what="the admin token kma_…")


async def _body() -> Any:
    """The request's JSON, strictly: no NaN, no lone surrogates, no nesting deeper than Python recurses."""
    raw = await request.get_data()
    try:
        return msgspec.json.decode(raw or b"null")
    except msgspec.DecodeError as exc:
        raise ApiError(400, "invalid_json", f"the request body is not JSON: {exc}") from None
    except RecursionError:
        raise ApiError(400, "invalid_json", "the request body nests too deeply") from None


def json_response(data: Any, status: int = 200) -> Response:
    return Response(json.dumps(data), status=status, content_type="application/json")


@dataclass(frozen=True)
class Route:
    """One operation: its method and OpenAPI path (`{id}` for the item), what it is, the view serving it, the
    bodies it decodes (`request`, `query`) and answers with `status` (`response`; None: no body), and the
    error statuses it may answer."""

    method: str
    path: str
    summary: str
    tag: str
    view: Callable[..., Awaitable[Response]]
    status: int
    response: type[bodies.Body] | None
    errors: tuple[int, ...]
    request: type[bodies.Body] | None = None
    query: type[bodies.Body] | None = None

    @property
    def rule(self) -> str:
        """The path as the blueprint's URL rule."""
        return self.path.removeprefix(blueprint.url_prefix).replace("{id}", "<item_id>").replace("{linkId}", "<link_id>")


def _routes(kind: str) -> list[Route]:
    """List/create/get/update/delete (and rotate-key for agents and gateways) of one kind."""
    created, create, update = bodies.CREATED[kind], bodies.CREATES[kind], bodies.UPDATES[kind]

    async def list_items() -> Response:
        query = bodies.page_query(request.args)
        return json_response(services.page(current(), kind, query.limit, query.offset))

    async def post() -> Response:
        return json_response(services.create(current(), kind, bodies.decode(create, await _body())), 201)

    async def get(item_id: str) -> Response:
        return json_response(services.get(current(), kind, item_id))

    async def patch(item_id: str) -> Response:
        return json_response(services.update(current(), kind, item_id, bodies.decode(update, await _body())))

    async def delete(item_id: str) -> Response:
        services.delete(current(), kind, item_id)
        return Response(status=204)

    async def rotate_key(item_id: str) -> Response:
        return json_response(services.rotate_client_key(current(), kind, item_id))

    base, item, view, a = f"/api/{kind}s", f"/api/{kind}s/{{id}}", bodies.VIEWS[kind], "an" if kind == "agent" else "a"
    routes = [
        Route("GET", base, f"List {kind}s", kind, list_items, 200, bodies.Page[view], (400, 401, 403),
              query=bodies.PageQuery),
        Route("POST", base, f"Create {a} {kind}" + ("; apiKey is shown only in the answer" if kind != "tunnel" else ""),
              kind, post, 201, created, (400, 401, 403, 409), request=create),
        Route("GET", item, f"Get {a} {kind}", kind, get, 200, view, (401, 403, 404)),
        Route("PATCH", item, f"Change {a} {kind}", kind, patch, 200, view, (400, 401, 403, 404, 409), request=update),
        Route("DELETE", item, f"Delete {a} {kind}" + (" and the tunnels only it serves" if kind == "agent" else ""),
              kind, delete, 204, None, (401, 403, 404)),
    ]
    if kind != "tunnel":
        routes.append(Route("POST", item + "/rotate-key",
                            f"Replace the {kind}'s API key, shown only in the answer (its current connection is "
                            "closed)", kind, rotate_key, 200, bodies.KeyRotation, (401, 403, 404)))
    return routes


def _access_routes() -> list[Route]:
    """Share links of a tunnel, and ending its visitors' sessions (control/access.py)."""

    async def create_link(item_id: str) -> Response:
        body = bodies.decode(bodies.ShareLinkCreate, await _body())
        return json_response(services.create_share_link(current(), item_id, body), 201)

    async def list_links(item_id: str) -> Response:
        return json_response(services.share_links(current(), item_id))

    async def revoke_link(item_id: str, link_id: str) -> Response:
        services.revoke_share_link(current(), item_id, link_id)
        return Response(status=204)

    async def revoke_sessions(item_id: str) -> Response:
        given = await _body()  # none at all: everyone's
        body = bodies.decode(bodies.SessionRevocation, {} if given is None else given)
        return json_response(services.revoke_sessions(current(), item_id, body))

    links = "/api/tunnels/{id}/share-links"
    return [
        Route("POST", links, "Create a share link that opens the tunnel without an account until it expires; its url "
              "is shown only in the answer", "tunnel", create_link, 201, bodies.ShareLinkWithUrl, (400, 401, 403, 404),
              request=bodies.ShareLinkCreate),
        Route("GET", links, "List the tunnel's share links", "tunnel", list_links, 200, bodies.ShareLinks,
              (401, 403, 404)),
        Route("DELETE", links + "/{linkId}", "Revoke a share link (and the sessions it opened)", "tunnel",
              revoke_link, 204, None, (401, 403, 404)),
        Route("POST", "/api/tunnels/{id}/revoke-sessions", "End the visitor sessions of the tunnel: every one, or "
              "one user's ({\"email\": …})", "tunnel", revoke_sessions, 200, bodies.Tunnel, (400, 401, 403, 404),
              request=bodies.SessionRevocation),
    ]


async def install() -> Response:
    return json_response(dist.locations(request.host_url))


ROUTES = [route for kind in ("agent", "gateway", "tunnel") for route in _routes(kind)] + _access_routes()
ROUTES.append(Route("GET", "/api/install", "Where to install kakuremichi from: the wheel and image context of "
                    "control's own version, served at /dist", "install", install, 200, bodies.Install, (401, 403)))
for _route in ROUTES:
    blueprint.add_url_rule(_route.rule, f"{_route.tag}_{_route.view.__name__}", _route.view,
                           methods=[_route.method])
