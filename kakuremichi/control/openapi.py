"""The OpenAPI 3.1 description of the admin REST API, served at /api/openapi.json."""

from __future__ import annotations

from kakuremichi.control.validation import ID_PATTERN, MAX_OFFSET


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _json_body(schema: dict) -> dict:
    return {"content": {"application/json": {"schema": schema}}}


def _errors(*statuses: int) -> dict:
    text = {400: "Invalid input (details name each field)", 401: "Missing admin token",
            403: "Wrong admin token", 404: "No such object", 409: "Duplicate name/domain, or pool exhausted"}
    return {str(s): {"description": text[s], **_json_body(_ref("Error"))} for s in statuses}


def _collection(kind: str, schema: str, create: str) -> dict:
    return {
        "get": {"summary": f"List {kind}s", "tags": [kind],
                "parameters": [{"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1,
                                                                         "maximum": 500, "default": 100}},
                               {"name": "offset", "in": "query", "schema": {"type": "integer", "minimum": 0,
                                                                          "maximum": MAX_OFFSET, "default": 0}}],
                "responses": {"200": {"description": "One page", **_json_body({
                    "type": "object", "properties": {"items": {"type": "array", "items": _ref(schema)},
                                                     "total": {"type": "integer"}, "limit": {"type": "integer"},
                                                     "offset": {"type": "integer"}}})},
                              **_errors(400, 401, 403)}},
        "post": {"summary": f"Create a {kind}", "tags": [kind], "requestBody": {"required": True,
                                                                             **_json_body(_ref(create))},
                 "responses": {"201": {"description": f"The new {kind}" + (
                     "; apiKey is shown only here" if kind != "tunnel" else ""), **_json_body(_ref(
                         schema + "WithKey" if kind != "tunnel" else schema))}, **_errors(400, 401, 403, 409)}},
    }


_ID = {"type": "string", "pattern": ID_PATTERN}
_ID_PARAMETER = [{"name": "id", "in": "path", "required": True, "schema": _ID,
                  "description": "Anything else is not found (404)"}]


def _item(kind: str, schema: str, update: str) -> dict:
    return {
        "parameters": _ID_PARAMETER,
        "get": {"summary": f"Get a {kind}", "tags": [kind],
                "responses": {"200": {"description": f"The {kind}", **_json_body(_ref(schema))},
                              **_errors(401, 403, 404)}},
        "patch": {"summary": f"Change a {kind}", "tags": [kind],
                  "requestBody": {"required": True, **_json_body(_ref(update))},
                  "responses": {"200": {"description": f"The changed {kind}", **_json_body(_ref(schema))},
                                **_errors(400, 401, 403, 404, 409)}},
        "delete": {"summary": f"Delete a {kind}" + (" and its tunnels" if kind == "agent" else ""),
                   "tags": [kind], "responses": {"204": {"description": "Deleted"}, **_errors(401, 403, 404)}},
    }


def _rotate(kind: str) -> dict:
    return {"parameters": _ID_PARAMETER,
            "post": {"summary": f"Replace the {kind}'s API key (its current connection is closed)", "tags": [kind],
                     "responses": {"200": {"description": "The new key, shown only here", **_json_body({
                         "type": "object", "properties": {"id": {"type": "string"}, "apiKey": {"type": "string"}}})},
                         **_errors(401, 403, 404)}}}


_STRING = {"type": "string"}
_NULLABLE_STRING = {"type": ["string", "null"]}
_TIME = {"type": ["string", "null"], "format": "date-time"}
_NAME = {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._ -]{0,63}$"}
_STATUS = {"type": "string", "enum": ["online", "offline"]}
_PORT = {"type": ["integer", "null"], "minimum": 1, "maximum": 65535}
_TUNNEL_INPUT = {
    "domain": {"type": "string", "description": "Host name (lowercased; `*.` wildcard allowed), unique"},
    "agentId": _ID,
    "target": {"type": "string", "description": "host:port or http(s)://host:port, seen from the agent"},
    "enabled": {"type": "boolean", "default": True},
    "description": {"type": "string", "maxLength": 500},
    "tlsMode": {"type": "string", "enum": ["acme", "self-signed", "off", "custom"], "default": "acme"},
    "forceHttps": {"type": "boolean", "default": False},
    "httpProxyEnabled": {"type": "boolean", "default": False},
    "socksProxyEnabled": {"type": "boolean", "default": False},
}
_AGENT = {"id": _STRING, "name": _STRING, "publicKey": _NULLABLE_STRING, "status": _STATUS, "lastSeenAt": _TIME,
          "metadata": {"type": "object"}, "createdAt": _TIME, "tunnelIds": {"type": "array", "items": _STRING}}
_WORKER = {"index": {"type": "integer", "minimum": 1}, "id": _STRING, "publicKey": _NULLABLE_STRING,
           "publicEndpoint": _NULLABLE_STRING, "status": _STATUS, "lastSeenAt": _TIME}
_GATEWAY = {"id": _STRING, "name": _STRING, "publicKey": _NULLABLE_STRING, "publicEndpoint": _NULLABLE_STRING,
            "wireguardPort": _PORT, "metadata": {"type": "object"}, "status": _STATUS, "lastSeenAt": _TIME,
            "createdAt": _TIME,
            "workers": {"type": "array", "items": {"type": "object", "properties": _WORKER, "additionalProperties": False},
                        "description": "Its worker processes beyond the first (kakuremichi gateway --workers), each a "
                                       "WireGuard peer of every agent with an address in every tunnel"}}


def _object(properties: dict, required: list[str] | None = None) -> dict:
    schema = {"type": "object", "properties": properties, "additionalProperties": False}
    return {**schema, "required": required} if required else schema


DOCUMENT = {
    "openapi": "3.1.0",
    "info": {"title": "kakuremichi control", "version": "1",
             "description": "Admin API for agents, gateways and tunnels. Every change is pushed to the connected "
                            "gateways and agents over the /ws WebSocket within a second."},
    "security": [{"admin": []}],
    "paths": {
        "/api/agents": _collection("agent", "Agent", "AgentCreate"),
        "/api/agents/{id}": _item("agent", "Agent", "AgentUpdate"),
        "/api/agents/{id}/rotate-key": _rotate("agent"),
        "/api/gateways": _collection("gateway", "Gateway", "GatewayCreate"),
        "/api/gateways/{id}": _item("gateway", "Gateway", "GatewayUpdate"),
        "/api/gateways/{id}/rotate-key": _rotate("gateway"),
        "/api/tunnels": _collection("tunnel", "Tunnel", "TunnelCreate"),
        "/api/tunnels/{id}": _item("tunnel", "Tunnel", "TunnelUpdate"),
    },
    "components": {
        "securitySchemes": {"admin": {"type": "http", "scheme": "bearer",
                                      "description": "The admin token (kma_…) printed on control's first start"}},
        "schemas": {
            "Error": _object({"error": _STRING, "code": _STRING,
                              "details": {"type": "object", "additionalProperties": _STRING}}),
            "Agent": _object(_AGENT),
            "AgentWithKey": _object({**_AGENT, "apiKey": {"type": "string", "pattern": "^agt_"}}),
            "AgentCreate": _object({"name": _NAME, "metadata": {"type": "object"}}, ["name"]),
            "AgentUpdate": _object({"name": _NAME, "metadata": {"type": "object"}}),
            "Gateway": _object(_GATEWAY),
            "GatewayWithKey": _object({**_GATEWAY, "apiKey": {"type": "string", "pattern": "^gtw_"}}),
            "GatewayCreate": _object({"name": _NAME, "wireguardPort": _PORT, "metadata": {"type": "object"}},
                                     ["name"]),
            "GatewayUpdate": _object({"name": _NAME, "wireguardPort": _PORT, "metadata": {"type": "object"}}),
            "Tunnel": _object({"id": _STRING, **_TUNNEL_INPUT, "subnet": _STRING, "agentIp": _STRING,
                               "gatewayIps": {"type": "object", "additionalProperties": _STRING,
                                              "description": "gateway id → its address in this tunnel's subnet"},
                               "createdAt": _TIME,
                               "certificate": {"oneOf": [{"type": "null"}, _ref("Certificate")],
                                               "description": "The ACME certificate control stores and pushes "
                                                              "to the gateways; null until one is obtained, and "
                                                              "for the other TLS modes. Never the key."}}),
            "Certificate": _object({
                "issuer": {"type": "string", "description": "Issuer common name (organisation)"},
                "notBefore": {"type": "string", "format": "date-time"},
                "notAfter": {"type": "string", "format": "date-time"},
                "daysLeft": {"type": "integer", "description": "Whole days until notAfter; negative once expired"},
                "fingerprintSha256": {"type": "string", "pattern": "^[0-9A-F]{2}(:[0-9A-F]{2}){31}$"},
                "domains": {"type": "array", "items": _STRING, "description": "DNS names of subjectAltName"},
                "lease": {"oneOf": [{"type": "null"}, _object({"holder": _STRING, "expiresAt": _TIME})],
                          "description": "The gateway (name) that alone may renew it until expiresAt, if any"},
            }),
            "TunnelCreate": _object(_TUNNEL_INPUT, ["domain", "agentId", "target"]),
            "TunnelUpdate": _object(_TUNNEL_INPUT),
        },
    },
}
