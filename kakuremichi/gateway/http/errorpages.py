"""The gateway's own answers (404 unknown host, 502 agent unreachable, …): a small page or JSON.

Users land on these when something is wrong, so each says what happened and what to check; API
clients asking for JSON get `{error, code, details}` like the rest of kakuremichi.
"""

from __future__ import annotations

import html
import json
from http import HTTPStatus

from kakuremichi import h1parse


Headers = list[tuple[bytes, bytes]]


class GatewayError(Exception):
    """An error the gateway answers itself; `code` is a stable machine-readable name."""

    def __init__(self, status: int, code: str, message: str, details: str = "", *, page: bytes | None = None,
                 json_page: bool = False, headers: Headers = ()) -> None:
        super().__init__(status, code, message)
        self.status, self.code, self.message, self.details = status, code, message, details
        self.page, self.json_page, self.headers = page, json_page, list(headers)  # a page made elsewhere


def access_answer(reply) -> GatewayError:
    """The access gate's answer (a kakuremichi.access.gate.Reply: login page, redirect, 403) as the error the
    fronts render."""
    return GatewayError(reply.status, reply.code, HTTPStatus(reply.status).phrase, page=reply.body,
                        json_page=reply.json, headers=reply.headers)


def unknown_host(host: str) -> GatewayError:
    return GatewayError(404, "unknown_host", "No tunnel serves this domain",
                        f"{host} is not routed by this gateway. Check the tunnel's domain and that it is enabled.")


def bad_request(details: str, status: int = 400) -> GatewayError:
    return GatewayError(status, "bad_request", "Bad request", details)


def agent_unreachable(host: str) -> GatewayError:
    return GatewayError(502, "agent_unreachable", "The tunnel's agent is unreachable",
                        f"The gateway could not reach the agent serving {host}, or the agent's target "
                        "answered badly. Check that the agent is running and its local service is up.")


def agent_offline(host: str) -> GatewayError:
    return GatewayError(502, "agent_offline", "The tunnel's agent is offline",
                        f"The agent serving {host} has been stopped. The site is back once its agent runs again.")


def no_backend(host: str) -> GatewayError:
    return GatewayError(502, "no_healthy_backend", "None of the tunnel's backends is up",
                        f"Every backend serving {host} is down, draining or disabled: their agents are unreachable "
                        "or their health checks fail. The site is back once one of them recovers.")


def upstream_timeout(host: str) -> GatewayError:
    return GatewayError(504, "upstream_timeout", "The tunnel's agent did not answer in time",
                        f"The service behind {host} took too long to respond.")


def method_not_allowed(method: str) -> GatewayError:
    return GatewayError(405, "method_not_allowed", "Method not allowed",
                        f"{method} is not supported by this gateway.")


def _prefers_json(accept: bytes) -> bool:
    """True when the client ranks application/json above text/html (RFC 9110 q-values)."""
    best = {b"json": -1.0, b"html": -1.0}
    for item in accept.lower().split(b","):
        media, *params = [p.strip() for p in item.split(b";")]
        q = 1.0
        for param in params:
            if param.startswith(b"q="):
                try:
                    q = float(param[2:])
                except ValueError:
                    q = 0.0
        kind = b"json" if media in (b"application/json", b"application/problem+json") else (
            b"html" if media in (b"text/html", b"text/*", b"*/*") else None)
        if kind:
            best[kind] = max(best[kind], q - (0.001 if media in (b"*/*", b"text/*") else 0))
    return best[b"json"] > best[b"html"]


def render(error: GatewayError, accept: bytes = b"") -> tuple[Headers, bytes]:
    """Response headers and body for `error`, as JSON when the client prefers it, else HTML."""
    if error.page is not None:
        body = error.page
        ctype = b"application/json" if error.json_page else b"text/html; charset=utf-8"
    elif _prefers_json(accept):
        body = json.dumps({"error": error.message, "code": error.code, "details": error.details}).encode()
        ctype = b"application/json"
    else:
        title = f"{error.status} {error.message}"
        body = (
            "<!doctype html>\n<html lang=en><meta charset=utf-8>"
            "<meta name=viewport content='width=device-width,initial-scale=1'>"
            f"<title>{html.escape(title)}</title>"
            "<body style='font-family:system-ui,sans-serif;max-width:36rem;margin:4rem auto;padding:0 1rem'>"
            f"<h1>{html.escape(title)}</h1><p>{html.escape(error.details)}</p>"
            "<hr><small>kakuremichi gateway</small></body></html>\n"
        ).encode()
        ctype = b"text/html; charset=utf-8"
    headers = [(b"content-type", ctype), (b"content-length", str(len(body)).encode()),
               (b"cache-control", b"no-store")]
    headers += [(name, value) for name, value in error.headers if name != b"cache-control"]
    return headers, body


def response(error: GatewayError, accept: bytes = b"", *, close: bool = False) -> tuple[h1parse.Response, bytes]:
    """An HTTP/1.1 Response plus body for `error`."""
    headers, body = render(error, accept)
    if close:
        headers.append((b"connection", b"close"))
    return h1parse.Response(error.status, headers, HTTPStatus(error.status).phrase.encode()), body
