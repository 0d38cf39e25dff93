"""Request validation: every field checked, every problem reported at once as `{field: message}`.

Handlers describe a body as `{field: (check, required)}`; a check returns the normalised value or raises
ValueError with a message meant for the API user.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from kakuremichi import protocol
from kakuremichi.gateway.hostname import InvalidHost, normalize_host

Check = Callable[[Any], Any]
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._ -]{0,63}\Z")
ID_PATTERN = "^[A-Za-z0-9_-]{1,64}$"  # what control makes (uuid4 hex), with room; never blank or padded
_ID = re.compile(ID_PATTERN.rstrip("$") + r"\Z")
MAX_OFFSET = 2**31 - 1  # past it the database's integer overflows; no list is that long
_QUERY_INTEGER = re.compile(r"[0-9]{1,10}\Z")  # ASCII digits only: str.isdigit takes '²', int() takes '١'
_TARGET_HOST = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?\Z")


class ApiError(Exception):
    """An error the API reports as `{error, code, details}` with an HTTP status."""

    def __init__(self, status: int, code: str, message: str, details: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.details = status, code, message, details or {}

    def body(self) -> dict:
        return {"error": self.message, "code": self.code, "details": self.details}


def parse_body(body: Any, fields: dict[str, tuple[Check, bool]], *, partial: bool = False) -> dict[str, Any]:
    """Validate a JSON object against `fields`; with `partial` (PATCH) nothing is required."""
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_json", "the request body must be a JSON object")
    errors: dict[str, str] = {name: "unknown field" for name in body if name not in fields}
    values: dict[str, Any] = {}
    for name, (check, required) in fields.items():
        if name not in body:
            if required and not partial:
                errors[name] = "required"
            continue
        try:
            values[name] = check(body[name])
        except ValueError as exc:
            errors[name] = str(exc)
    if errors:
        raise ApiError(400, "validation_failed", "invalid request: " + ", ".join(sorted(errors)), errors)
    return values


def name(value: Any) -> str:
    if not isinstance(value, str) or not _NAME.match(value):
        raise ValueError("must be 1-64 characters: letters, digits, space, '.', '_' or '-', starting with a "
                         "letter or digit")
    return value


def domain(value: Any) -> str:
    """A host name (optionally `*.`-wildcard), lowercased; no port, no IP address."""
    if not isinstance(value, str) or ":" in value or "/" in value:
        raise ValueError("must be a host name like app.example.com (no scheme, port or path)")
    try:
        normalised = normalize_host(value, allow_wildcard=True)
        ipaddress.ip_address(normalised)
    except InvalidHost as exc:
        raise ValueError(f"not a valid host name ({exc})") from None
    except ValueError:
        return normalised
    raise ValueError("must be a host name, not an IP address")


def target(value: Any) -> str:
    """Where the agent forwards: `host:port`, or `http://host:port` / `https://host:port`."""
    if not isinstance(value, str):
        raise ValueError("must be a string like localhost:8080 or http://127.0.0.1:8080")
    text = value.strip()
    parts = urlsplit(text if "://" in text else "tcp://" + text)
    try:
        port = parts.port
    except ValueError:
        port = None
    host = parts.hostname or ""
    if (parts.scheme not in ("tcp", "http", "https") or port is None or port == 0 or parts.path not in ("", "/")
            or parts.query or parts.fragment or parts.username or not _is_host(host)):
        raise ValueError("must be host:port or http(s)://host:port, like localhost:8080")
    return text


def _is_host(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return bool(_TARGET_HOST.match(host))


def boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError("must be true or false")
    return value


def description(value: Any) -> str:
    if not isinstance(value, str) or len(value) > 500:
        raise ValueError("must be a string of at most 500 characters")
    return value


def tls_mode(value: Any) -> str:
    if value not in protocol.TLS_MODES:
        raise ValueError("must be one of " + ", ".join(protocol.TLS_MODES))
    return value


def optional_port(value: Any) -> int | None:
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or not 0 < value < 65536):
        raise ValueError("must be a port number 1-65535, or null")
    return value


def metadata(value: Any) -> dict:
    if not isinstance(value, dict):
        raise ValueError("must be a JSON object")
    return value


def identifier(value: Any) -> str:
    if not is_identifier(value):
        raise ValueError("must be an id: 1-64 letters, digits, '_' or '-'")
    return value


def is_identifier(value: Any) -> bool:
    """Whether `value` could be an id control made. The database strips strings, so ' ' would reach it as ''."""
    return isinstance(value, str) and bool(_ID.match(value))


def page(args: Any) -> tuple[int, int]:
    """`?limit=&offset=` for list endpoints: limit 1-500 (default 100), offset 0-MAX_OFFSET."""
    errors = {}
    values = {}
    for key, default, low, high in (("limit", 100, 1, 500), ("offset", 0, 0, MAX_OFFSET)):
        raw = args.get(key, str(default))
        if not _QUERY_INTEGER.match(raw) or not low <= int(raw) <= high:
            errors[key] = f"must be an integer from {low} to {high}"
        else:
            values[key] = int(raw)
    if errors:
        raise ApiError(400, "validation_failed", "invalid query: " + ", ".join(errors), errors)
    return values["limit"], values["offset"]
