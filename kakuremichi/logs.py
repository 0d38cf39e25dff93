"""Structured, levelled logging shared by every component.

Lines are `time level logger message key=value ...` for humans, or one JSON object per line with
`--log-format json` for log collectors. Callers pass fields with `extra={"fields": {...}}` via `log()`.

While `write_in_batches()` runs (every command runs it), lines below WARNING are held for at most a
fraction of a second and written together: the gateway logs every request, and a write per line was a
system call per request. A warning or worse goes out at once, with everything held before it. Such a
held line is formatted straight from its fields when only this module's handler would see it (no other
handler or filter on the way, as in the daemons): a LogRecord and the logging module's dispatch took
5 of the 14 us the gateway spent on each access line.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections import deque

import trio

BATCH_INTERVAL = 0.2  # longest a held line waits
_BATCH_CHARS = 1 << 16  # or until this much is held


class _Formatter(logging.Formatter):
    def __init__(self, json_lines: bool) -> None:
        super().__init__()
        self.json_lines = json_lines
        self._second: tuple[int, str] = (-1, "")  # the last timestamp's whole second, formatted

    def format(self, record: logging.LogRecord) -> str:
        exc = self.formatException(record.exc_info) if record.exc_info else None
        return self.line(record.created, record.levelname, record.name, record.getMessage(),
                         getattr(record, "fields", None) or {}, exc)

    def line(self, created: float, level: str, name: str, message: str, fields: dict, exc: str | None = None
             ) -> str:
        if _label:
            fields = {**fields, **_label}
        second = int(created)
        if second != self._second[0]:
            self._second = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
        ts = f"{self._second[1]}.{int((created - second) * 1000):03d}Z"
        if self.json_lines:
            obj = {"ts": ts, "level": level.lower(), "logger": name, "msg": message}
            obj.update(fields)
            if exc:
                obj["exc"] = exc
            return json.dumps(obj, default=str)
        parts = [ts, f"{level:<7}", name, message]
        parts += [f"{k}={_quote(v)}" for k, v in fields.items()]
        line = " ".join(parts)
        if exc:
            line += "\n" + exc
        return line


def _quote(value: object) -> str:
    text = value if type(value) is str else str(value)
    return json.dumps(text) if not text or " " in text or '"' in text or "=" in text else text


class _Handler(logging.StreamHandler):
    """A stream handler that holds lines back while `batching`, to write them together."""

    def __init__(self, stream) -> None:
        super().__init__(stream)
        self.batching = False
        self._held: list[str] = []
        self._held_chars = 0

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.WARNING:
            _problems.append({"time": record.created, "level": record.levelname.lower(), "logger": record.name,
                              "message": record.getMessage(), **(getattr(record, "fields", None) or {})})
        if not self.batching:
            super().emit(record)
            return
        try:
            line = self.format(record)
        except Exception:
            self.handleError(record)
            return
        self.hold(line)
        if record.levelno >= logging.WARNING:
            self.flush()

    def hold(self, line: str) -> None:
        self._held.append(line)
        self._held_chars += len(line)
        if self._held_chars >= _BATCH_CHARS:
            self.flush()

    def flush(self) -> None:
        with self.lock:
            lines, self._held, self._held_chars = self._held, [], 0
            try:
                if lines:
                    self.stream.write(self.terminator.join(lines) + self.terminator)
                super().flush()
            except OSError:
                pass  # whoever read the log is gone: the lines can go nowhere, and the daemon goes on


_handler: _Handler | None = None
_label: dict[str, object] = {}  # fields of every line of this process (which worker it is)
_problems: deque[dict] = deque(maxlen=20)  # the last warnings and errors, for `kakuremichi status`


def recent_problems() -> list[dict]:
    """The last warnings and errors this process logged (after `setup`), oldest first."""
    return list(_problems)


def label(**fields: object) -> None:
    """Add `fields` to every line this process logs from now on (a gateway worker's index: their lines share
    one output)."""
    _label.update(fields)


def setup(level: str = "info", fmt: str = "text") -> None:
    """Configure the root logger once for a command-line entry point."""
    global _handler
    handler = _handler = _Handler(sys.stderr)
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
    write(logger, level, message, fields)


def write(logger: logging.Logger, level: int, message: str, fields: dict) -> None:
    """`log` with the fields as a dict: held as a formatted line at once when nothing else would see it."""
    if not logger.isEnabledFor(level):
        return
    handler = _handler
    if handler is not None and handler.batching and level < logging.WARNING and _only_ours(logger, handler):
        handler.hold(handler.formatter.line(time.time(), logging.getLevelName(level), logger.name, message, fields))
        return
    logger.log(level, message, extra={"fields": fields})


def _only_ours(logger: logging.Logger, handler: _Handler) -> bool:
    """Whether a record of `logger` would reach `handler` alone, unfiltered (no caplog, no extra handler)."""
    while logger.parent is not None:
        if logger.handlers or logger.filters or not logger.propagate:
            return False
        logger = logger.parent
    return logger.handlers == [handler] and not logger.filters and not handler.filters


async def write_in_batches() -> None:
    """Hold log lines below WARNING and write them together every BATCH_INTERVAL, for as long as this
    runs (without `setup`, nothing to do)."""
    handler = _handler
    if handler is None:
        return
    handler.batching = True
    try:
        while True:
            await trio.sleep(BATCH_INTERVAL)
            handler.flush()
    finally:
        handler.batching = False
        handler.flush()
