"""One structured access-log line per request, without secrets.

Query strings routinely carry tokens and headers carry cookies and credentials, so the line holds the
path only and no header values.
"""

from __future__ import annotations

import logging

import trio

from kakuremichi.access.gate import SHARE
from kakuremichi.logs import write

logger = logging.getLogger("kakuremichi.gateway.access")


class AccessRecord:
    """What one request did; fields left at their defaults stay out of the line (status always shows,
    0 meaning no response could be sent: client gone, or aborted mid-stream)."""

    __slots__ = ("client", "scheme", "protocol", "method", "host", "path", "status", "bytes_in", "bytes_out",
                 "upstream", "reused", "error", "started", "tunnel")

    def __init__(self, client: str, scheme: str) -> None:
        self.client = client
        self.scheme = scheme
        self.protocol = ""  # "h2" for HTTP/2 streams; HTTP/1.1 lines leave it out
        self.method = self.host = self.path = "-"
        self.status = self.bytes_in = self.bytes_out = 0
        self.upstream = self.error = ""
        self.reused = False
        self.started = trio.current_time()
        self.tunnel: tuple[str, str] | None = None  # (tunnel id, domain) of the route it took, for the metrics

    def set_target(self, target: bytes) -> None:
        path = target.split(b"?", 1)[0]
        if path.startswith(SHARE):
            path = SHARE + b"..."  # the rest is the share link's secret
        self.path = path.decode("latin-1")[:512]

    def emit(self) -> None:
        if not logger.isEnabledFor(logging.INFO):
            return
        fields = {"client": self.client, "scheme": self.scheme, "method": self.method, "host": self.host,
                  "path": self.path, "status": self.status}
        for name in ("protocol", "bytes_in", "bytes_out", "upstream", "reused", "error"):
            value = getattr(self, name)
            if value:
                fields[name] = value
        fields["ms"] = round((trio.current_time() - self.started) * 1000, 1)
        write(logger, logging.INFO, "request", fields)
