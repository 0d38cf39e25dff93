"""Structured, levelled logging shared by every component.

Lines are `time level logger message key=value ...` for humans, or one JSON object per line with
`--log-format json` for log collectors. Callers pass fields with `extra={"fields": {...}}` via `log()`.
"""

from __future__ import annotations

import json
import logging
import sys
import time


class _Formatter(logging.Formatter):
    def __init__(self, json_lines: bool) -> None:
        super().__init__()
        self.json_lines = json_lines

    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "fields", None) or {}
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"
        message = record.getMessage()
        if self.json_lines:
            obj = {"ts": ts, "level": record.levelname.lower(), "logger": record.name, "msg": message}
            obj.update(fields)
            if record.exc_info:
                obj["exc"] = self.formatException(record.exc_info)
            return json.dumps(obj, default=str)
        parts = [ts, f"{record.levelname:<7}", record.name, message]
        parts += [f"{k}={_quote(v)}" for k, v in fields.items()]
        line = " ".join(parts)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def _quote(value: object) -> str:
    text = value if type(value) is str else str(value)
    return json.dumps(text) if not text or " " in text or '"' in text or "=" in text else text


def setup(level: str = "info", fmt: str = "text") -> None:
    """Configure the root logger once for a command-line entry point."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter(fmt == "json"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Nothing here prints threads, processes or the calling line, and the gateway logs every request: skip
    # collecting them (the logging HOWTO's "Optimization" settings).
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    logging._srcfile = None


def add_arguments(parser) -> None:
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                        help="log verbosity")
    parser.add_argument("--log-format", default="text", choices=["text", "json"], help="log line format")


def log(logger: logging.Logger, level: int, message: str, **fields: object) -> None:
    """Log `message` with structured `fields` (rendered as key=value or JSON keys)."""
    if logger.isEnabledFor(level):
        logger.log(level, message, extra={"fields": fields})
