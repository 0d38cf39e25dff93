"""One structured access-log line per request, without secrets.

Query strings routinely carry tokens and headers carry cookies and credentials, so the line holds the
path only and no header values.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import trio

from kakuremichi.logs import log

logger = logging.getLogger("kakuremichi.gateway.access")


@dataclass
class AccessRecord:
    client: str
    scheme: str
    method: str = "-"
    host: str = "-"
    path: str = "-"
    status: int = 0  # 0: no response could be sent (client gone, or aborted mid-stream)
    bytes_in: int = 0
    bytes_out: int = 0
    upstream: str = ""
    reused: bool = False
    error: str = ""
    started: float = field(default_factory=trio.current_time)

    def set_target(self, target: bytes) -> None:
        self.path = target.split(b"?", 1)[0].decode("latin-1")[:512]

    def emit(self) -> None:
        fields = {k: v for k, v in vars(self).items() if k != "started" and (v or k == "status")}
        fields["ms"] = round((trio.current_time() - self.started) * 1000, 1)
        log(logger, logging.INFO, "request", **fields)
