"""`--discover docker`: running containers with a `kakuremichi.domain` label become tunnels of this agent, and
go when they stop, through the Docker Engine API on its Unix socket (Docker's, or podman's compatible
`podman system service`). Their tunnels are declared to control like a tunnels file's (declared.py), so they
too must lie under the domains delegated to the agent.

Labels: `kakuremichi.domain` (required); `kakuremichi.port`, the container's port (needed when it publishes
or exposes more than one); `kakuremichi.target` instead, any target (`host:port`, `https://host:port`);
`kakuremichi.tls-mode`, `kakuremichi.force-https`. The target is the port's published address on this host
(127.0.0.1 for one published on every address), else the container's own address on its network, which an
agent in a container on that network reaches.
"""

from __future__ import annotations

import json
import logging

import httpx
import trio

from kakuremichi import protocol
from kakuremichi.agent.declared import Declarations
from kakuremichi.logs import log

logger = logging.getLogger("kakuremichi.agent")
PREFIX = "kakuremichi."
DOMAIN_LABEL = PREFIX + "domain"
POLL = 2.0  # seconds between listings of the running containers
API = "/v1.41"  # Docker 20.10's API version, which podman's service speaks too
UNSPECIFIED = ("", "0.0.0.0", "::")
LABELS = {"domain": DOMAIN_LABEL, "target": PREFIX + "target", "tlsMode": PREFIX + "tls-mode",
          "forceHttps": PREFIX + "force-https"}  # a declared tunnel's field → the label that gives it


def tunnel_of(container: dict) -> protocol.DeclaredTunnel:
    """The tunnel a container's labels ask for; ValueError (ProtocolError) saying which label is wrong."""
    labels = container.get("Labels") or {}
    target = labels.get(LABELS["target"]) or _target(container, labels.get(PREFIX + "port"))
    body = {"domain": labels.get(DOMAIN_LABEL), "target": target}
    if LABELS["tlsMode"] in labels:
        body["tlsMode"] = labels[LABELS["tlsMode"]]
    if LABELS["forceHttps"] in labels:
        body["forceHttps"] = labels[LABELS["forceHttps"]].strip().lower() in ("1", "true", "yes", "on")
    frame = json.dumps({"type": protocol.TunnelsDeclared.type, "tunnels": [body]})
    try:
        return protocol.decode(frame).tunnels[0]
    except protocol.ProtocolError as exc:
        field, _, problem = str(exc).removeprefix(f"{protocol.TunnelsDeclared.type}: tunnels[0].").partition(": ")
        raise ValueError(f"label {LABELS.get(field, field)}: {problem}") from None


def _target(container: dict, port_label: str | None) -> str:
    ports = [p for p in container.get("Ports") or [] if p.get("Type", "tcp") == "tcp" and p.get("PrivatePort")]
    private = {p["PrivatePort"] for p in ports}
    if port_label is None:
        if len(private) != 1:
            raise ValueError(f"it has {len(private) or 'no'} TCP ports: say which with the label {PREFIX}port")
        port = private.pop()
    elif port_label.isdigit():
        port = int(port_label)
    else:
        raise ValueError(f"label {PREFIX}port: {port_label!r} is not a port number")
    for mapping in ports:
        if mapping["PrivatePort"] == port and mapping.get("PublicPort"):
            host = mapping.get("IP", "")
            host = "127.0.0.1" if host in UNSPECIFIED else host
            return f"[{host}]:{mapping['PublicPort']}" if ":" in host else f"{host}:{mapping['PublicPort']}"
    for network in ((container.get("NetworkSettings") or {}).get("Networks") or {}).values():
        if network.get("IPAddress"):
            return f"{network['IPAddress']}:{port}"
    raise ValueError(f"port {port} is neither published nor on a network with an address")


def name_of(container: dict) -> str:
    return ((container.get("Names") or [""])[0].lstrip("/")) or str(container.get("Id", "?"))[:12]


async def discover(declarations: Declarations, socket: str, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Declare the labelled containers' tunnels, listing them every POLL seconds; while the API cannot be
    reached the last ones stay declared (said once)."""
    query = {"filters": json.dumps({"label": [DOMAIN_LABEL]})}
    problems: dict[str, str] = {}  # container → what is wrong with its labels, said once per change
    failed = None
    task_status.started()
    async with httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(uds=socket), base_url="http://docker",
                                 timeout=10) as client:
        while True:
            try:
                response = await client.get(f"{API}/containers/json", params=query)
                response.raise_for_status()
                containers = response.json()
                failed = None
            except (httpx.HTTPError, ValueError) as exc:
                if str(exc) != failed:
                    failed = str(exc)
                    log(logger, logging.WARNING, "cannot list containers; keeping their tunnels", socket=socket,
                        error=failed)
            else:
                tunnels, now = [], {}
                for container in containers:
                    try:
                        tunnels.append(tunnel_of(container))
                    except ValueError as exc:
                        now[name_of(container)] = str(exc)
                for name, problem in now.items():
                    if problems.get(name) != problem:
                        log(logger, logging.WARNING, "container labels ignored", container=name, error=problem)
                problems = now
                await declarations.update("docker", tunnels)
            await trio.sleep(POLL)
