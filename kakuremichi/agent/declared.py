"""The tunnels this agent declares itself, for control to make under the domains delegated to it
(control/declarations.py): those of its --tunnels-file and those --discover finds, sent whole on every
connection to control and whenever one of them changes. What control refuses is logged, domain by domain.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import msgspec
import trio
import yaml

from kakuremichi import protocol
from kakuremichi.controlclient import ControlClient, NotConnected
from kakuremichi.logs import log

logger = logging.getLogger("kakuremichi.agent")
FILE_POLL = 2.0  # seconds between looks at the tunnels file's modification time
RETRY_REFUSED = 10.0  # seconds before a declaration control refused part of is sent again (the admin may have
# delegated the domain meanwhile, or freed a subnet)


class TunnelsFileError(ValueError):
    """The tunnels file cannot be used: says which file, where and what is wrong."""


def parse(text: str, source: str) -> list[protocol.DeclaredTunnel]:
    """The tunnels of a tunnels file (YAML: `tunnels:`, a list of domain, target and optionally tlsMode and
    forceHttps), checked as control will check them."""
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise TunnelsFileError(f"{source}{f' line {mark.line + 1}' if mark else ''}: not YAML: "
                               f"{getattr(exc, 'problem', None) or exc}") from None
    if document is None:
        document = {"tunnels": []}
    if not isinstance(document, dict) or set(document) != {"tunnels"}:
        raise TunnelsFileError(f"{source}: must be a mapping with one key, tunnels (a list of domain and target)")
    known = {f.encode_name for f in msgspec.structs.fields(protocol.DeclaredTunnel)}
    for index, entry in enumerate(document["tunnels"] or []):
        unknown = sorted(set(entry) - known) if isinstance(entry, dict) else []
        if unknown:  # the protocol ignores unknown fields (newer peers); a file's are typos
            raise TunnelsFileError(f"{source}: tunnels[{index}]: unknown field {', '.join(map(str, unknown))}; "
                                   f"the fields are {', '.join(sorted(known))}")
    try:
        frame = json.dumps({"type": protocol.TunnelsDeclared.type, "tunnels": document["tunnels"] or []},
                           default=str)
        return protocol.decode(frame).tunnels
    except protocol.ProtocolError as exc:
        raise TunnelsFileError(f"{source}: {str(exc).removeprefix(protocol.TunnelsDeclared.type + ': ')}") from None


def read(path: Path) -> list[protocol.DeclaredTunnel]:
    try:
        return parse(path.read_text(), str(path))
    except OSError as exc:
        raise TunnelsFileError(f"--tunnels-file: cannot read {path}: {exc.strerror or exc}") from None


class Declarations:
    """Every source's tunnels (the file, each discovery), merged and sent to control through `client`."""

    def __init__(self, client: ControlClient) -> None:
        self.client = client
        self.sources: dict[str, list[protocol.DeclaredTunnel]] = {}
        self.refused = False  # the last answer refused some: send again after RETRY_REFUSED
        client.on_connected, client.on_message = self.send, self.receive

    def merged(self) -> list[protocol.DeclaredTunnel]:
        """One tunnel per domain; a domain two sources declare goes to the first (the file, then discovery)."""
        tunnels: dict[str, protocol.DeclaredTunnel] = {}
        for source, declared in self.sources.items():
            for tunnel in declared:
                if tunnels.setdefault(tunnel.domain, tunnel) is not tunnel:
                    log(logger, logging.WARNING, "a domain declared twice: keeping the first", domain=tunnel.domain,
                        source=source)
        return list(tunnels.values())

    async def update(self, source: str, tunnels: list[protocol.DeclaredTunnel]) -> None:
        """`source` now declares `tunnels`: tell control if that changes anything."""
        if self.sources.get(source) != tunnels:
            self.sources[source] = tunnels
            log(logger, logging.INFO, "declared tunnels", source=source, domains=",".join(t.domain for t in tunnels))
            await self.send()

    async def send(self) -> None:
        """The whole declaration, now if connected (else on the next connection)."""
        try:
            await self.client.send(protocol.TunnelsDeclared(self.merged()))
        except NotConnected:
            pass

    async def receive(self, message: protocol.Message) -> None:
        if isinstance(message, protocol.DeclarationRefused):
            self.refused = bool(message.refused)
            for domain, reason in message.refused.items():
                log(logger, logging.WARNING, "control refused a declared tunnel", domain=domain, reason=reason)

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Send the declaration again while control refuses part of it."""
        task_status.started()
        while True:
            await trio.sleep(RETRY_REFUSED)
            if self.refused:
                self.refused = False
                await self.send()


async def watch_file(path: Path, declarations: Declarations, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Declare the file's tunnels, and again after each change; a broken edit is logged and the previous
    tunnels kept. `started` once the first read is declared (a broken file then raises TunnelsFileError)."""
    await declarations.update("tunnels-file", read(path))
    task_status.started()
    seen, failed = path.stat().st_mtime_ns, None
    while True:
        await trio.sleep(FILE_POLL)
        try:
            mtime = path.stat().st_mtime_ns
            if mtime != seen:
                seen = mtime
                await declarations.update("tunnels-file", read(path))
            failed = None
        except (OSError, TunnelsFileError) as exc:
            if str(exc) != failed:  # once per problem, not every poll
                failed = str(exc)
                log(logger, logging.WARNING, "tunnels file not reloaded; keeping its previous tunnels",
                    path=str(path), error=failed)
