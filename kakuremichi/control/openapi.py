"""The OpenAPI 3.1 description of the admin REST API, served at /api/openapi.json: generated from the route
table (api.ROUTES) and the bodies its views decode and answer (kakuremichi.control.bodies), so it cannot
drift from what the API does."""

from __future__ import annotations

from collections.abc import Iterable

import msgspec

from kakuremichi.control import bodies
from kakuremichi.control.api import ROUTES, Route

_REF = "#/components/schemas/{name}"
_ERRORS = {400: "Invalid input (details name each field)", 401: "Missing admin token", 403: "Wrong admin token",
           404: "No such object", 409: "Duplicate name/domain, or pool exhausted"}
_ID_PARAMETER = {"name": "id", "in": "path", "required": True,
                 "schema": {"type": "string", "pattern": bodies.ID_PATTERN},
                 "description": "Anything else is not found (404)"}


def _json(schema: dict) -> dict:
    return {"content": {"application/json": {"schema": schema}}}


def _document(routes: Iterable[Route]) -> dict:
    """The OpenAPI document of `routes`, their bodies as components."""
    routes = list(routes)
    models = [bodies.Error, *dict.fromkeys(model for route in routes for model in (route.request, route.response)
                                          if model is not None)]
    refs, schemas = msgspec.json.schema_components(models, schema_hook=bodies.schema_hook, ref_template=_REF)
    ref = dict(zip(models, refs))
    for model in models:
        if model.alternatives:
            schemas[model.__name__]["anyOf"] = [{"required": list(names)} for names in model.alternatives]
    queries = list(dict.fromkeys(route.query for route in routes if route.query is not None))
    query_refs, query_schemas = msgspec.json.schema_components(queries, ref_template="{name}")
    parameters = {query: [{"name": name, "in": "query", "schema": schema}
                          for name, schema in query_schemas[query_ref["$ref"]]["properties"].items()]
                  for query, query_ref in zip(queries, query_refs)}
    paths: dict[str, dict] = {}
    for route in routes:
        answer = {"description": route.summary}
        if route.response is not None:
            answer.update(_json(ref[route.response]))
        operation = {"summary": route.summary, "tags": [route.tag],
                     "responses": {str(route.status): answer,
                                   **{str(status): {"description": _ERRORS[status], **_json(ref[bodies.Error])}
                                      for status in route.errors}}}
        if route.query is not None:
            operation["parameters"] = parameters[route.query]
        if route.request is not None:
            operation["requestBody"] = {"required": True, **_json(ref[route.request])}
        item = paths.setdefault(route.path, {})
        if "{id}" in route.path:
            item["parameters"] = [_ID_PARAMETER] + ([{**_ID_PARAMETER, "name": "linkId"}]
                                                    if "{linkId}" in route.path else [])
        item[route.method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": "kakuremichi control", "version": "1",
                 "description": "Admin API for agents, gateways and tunnels. Every change is pushed to the "
                                "connected gateways and agents over the /ws WebSocket within a second."},
        "security": [{"admin": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {"admin": {"type": "http", "scheme": "bearer",
                                          "description": "The admin token (kma_…) printed on control's first start"}},
            "schemas": schemas,
        },
    }


DOCUMENT = _document(ROUTES)
