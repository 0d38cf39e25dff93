"""Request validation: every field checked, every problem reported at once as `{field: message}`.

Handlers describe a body as `{field: (check, required)}`; a check returns the normalised value or raises
ValueError with a message meant for the API user.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from kakuremichi import protocol
from kakuremichi.values import Domain, Target

Check = Callable[[Any], Any]
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._ -]{0,63}\Z")
ID_PATTERN = "^[A-Za-z0-9_-]{1,64}$"  # what control makes (uuid4 hex), with room; never blank or padded
_ID = re.compile(ID_PATTERN.rstrip("$") + r"\Z")
MAX_OFFSET = 2**31 - 1  # past it the database's integer overflows; no list is that long
_QUERY_INTEGER = re.compile(r"[0-9]{1,10}\Z")  # ASCII digits only: str.isdigit takes '²', int() takes '١'


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
    """A tunnel's public name (kakuremichi.values.Domain), in canonical form."""
    return str(Domain.parse(value))


def target(value: Any) -> str:
    """Where the agent forwards (kakuremichi.values.Target), in canonical form."""
    return str(Target.parse(value))


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
