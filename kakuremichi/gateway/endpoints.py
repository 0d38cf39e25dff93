"""Where each agent last reached this gateway, kept on disk across restarts.

Agents sit behind NAT, so a gateway learns an agent's address only from the packets the agent sends. A
restarted gateway has lost its sessions, and the agent keeps sending keepalives into sessions that no
longer exist: nothing in WireGuard makes it shake hands again before its next rekey, up to two minutes
later. Remembering the addresses (as wg-quick's SaveConfig does) lets the restarted gateway start the
handshake itself on the first request; the agent's NAT mapping is still open thanks to those keepalives.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import trio

from kakuremichi.logs import log
from kakuremichi.tunnel import TunnelNode
from kakuremichi.wg import keys

logger = logging.getLogger("kakuremichi.gateway")

SAVE_INTERVAL = 5.0  # seconds between checks for a changed address


class EndpointMemory:
    """`path` is this gateway's file; `siblings`, those of its other worker processes (workers.py), recall what
    it has not seen itself: an agent sends to every worker from its one socket, so the address they saw is the
    one to try, and a worker killed before it saved anything is started again knowing where its agents are."""

    def __init__(self, path: Path, siblings: list[Path] | tuple[Path, ...] = ()) -> None:
        self.path = path
        self._saved = self._load(path)
        self._known = {}
        for sibling in siblings:
            if sibling != path:
                self._known.update(self._load(sibling))
        self._known.update(self._saved)

    def _load(self, path: Path) -> dict[bytes, tuple[str, int]]:
        try:
            raw = json.loads(path.read_text())
            return {keys.decode(key): (str(host), int(port)) for key, (host, port) in raw.items()}
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, TypeError) as exc:
            log(logger, logging.WARNING, "ignoring unreadable agent address file", path=str(path), error=str(exc))
            return {}

    def recall(self, public_key: bytes) -> tuple[str, int] | None:
        return self._known.get(public_key)

    def save(self, node: TunnelNode) -> None:
        """Write the agents' current addresses if they changed since the last save (atomically)."""
        current = node.endpoints()
        if current == self._saved:
            return
        temporary = self.path.with_suffix(".tmp")
        try:
            temporary.write_text(json.dumps({keys.encode(k): list(v) for k, v in sorted(current.items())}))
            os.replace(temporary, self.path)
        except OSError as exc:
            log(logger, logging.WARNING, "cannot save agent addresses", path=str(self.path), error=str(exc))
            return
        self._saved = current
        self._known.update(current)

    async def keep_saving(self, node: TunnelNode) -> None:
        try:
            while True:
                await trio.sleep(SAVE_INTERVAL)
                self.save(node)
        finally:
            self.save(node)  # a clean shutdown records the very latest
