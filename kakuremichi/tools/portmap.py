"""`forward` and `expose`: TCP port mapping through a userspace WireGuard tunnel (like onetun and
wireproxy), for users who want a single service across a tunnel without root or a TUN device.

- forward: listen on a local TCP port; every connection is carried through the tunnel to an address
  inside it.
- expose: accept TCP on our [Interface] Address inside the tunnel; every connection goes to a local target.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass
from functools import partial

import trio

from kakuremichi.logs import log
from kakuremichi.netstack.trio_stack import NetStack
from kakuremichi.pipe import splice
from kakuremichi.wg import config as wg_config
from kakuremichi.wg.driver import WireGuardInterface, interface_from_config

logger = logging.getLogger("kakuremichi.tools.portmap")
_ids = itertools.count(1)


@dataclass(frozen=True)
class Mapping:
    listen_host: str
    listen_port: int
    target_host: str
    target_port: int

    def __str__(self) -> str:
        return f"{self.listen_host}:{self.listen_port}={self.target_host}:{self.target_port}"


def _host_port(text: str, what: str, default_host: str | None = None) -> tuple[str, int]:
    """HOST:PORT; with a default host, PORT alone too, and port 0 (any free port) for local listeners."""
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = default_host or "", text
    host = host.strip("[]")
    lowest = 0 if default_host else 1
    if not host or not port.isdigit() or not lowest <= int(port) < 65536:
        raise ValueError(f"{what} {text!r} must be HOST:PORT with a port from {lowest} to 65535")
    return host, int(port)


def parse_forward(spec: str) -> Mapping:
    """`[LOCAL_HOST:]PORT=TUNNEL_ADDR:PORT` (local host defaults to 127.0.0.1)."""
    local, sep, remote = spec.partition("=")
    if not sep:
        raise ValueError(f"mapping {spec!r} must look like 127.0.0.1:8080=10.0.0.2:80")
    return Mapping(*_host_port(local, "local address", "127.0.0.1"), *_host_port(remote, "tunnel address"))


def parse_expose(spec: str) -> Mapping:
    """`TUNNEL_PORT=LOCAL_HOST:PORT`: the listen side is every tunnel address of ours."""
    tunnel, sep, local = spec.partition("=")
    if not sep or not tunnel.isdigit() or not 0 < int(tunnel) < 65536:
        raise ValueError(f"mapping {spec!r} must look like 8080=127.0.0.1:3000")
    return Mapping("", int(tunnel), *_host_port(local, "local target"))


async def _bring_up(config_path: str, nursery: trio.Nursery) -> tuple[WireGuardInterface, NetStack]:
    config = wg_config.load(config_path)
    addresses = [str(a.ip) for a in config.addresses if a.version == 4]
    if not addresses:
        raise ValueError(f"{config_path}: [Interface] needs an IPv4 Address for the userspace stack")
    interface = await interface_from_config(config)
    stack = NetStack(interface, addresses)
    interface.attach(stack.receive_packets)
    await nursery.start(interface.run)
    await nursery.start(stack.run)
    log(logger, logging.INFO, "tunnel up", addresses=",".join(addresses), listen_port=interface.listen_port,
        peers=len(config.peers))
    return interface, stack


async def _carry(inbound: trio.abc.Stream, open_outbound, mapping: Mapping, origin: str) -> None:
    conn = next(_ids)
    log(logger, logging.INFO, "connection", id=conn, origin=origin, mapping=str(mapping))
    try:
        outbound = await open_outbound()
    except OSError as exc:
        log(logger, logging.WARNING, "connection failed", id=conn, target=f"{mapping.target_host}:"
            f"{mapping.target_port}", error=exc.strerror or str(exc))
        await trio.aclose_forcefully(inbound)
        return
    sent, received = await splice(inbound, outbound)
    log(logger, logging.INFO, "connection closed", id=conn, bytes_out=sent, bytes_in=received)


async def forward(config_path: str, mappings: list[Mapping], *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    async with trio.open_nursery() as nursery:
        _, stack = await _bring_up(config_path, nursery)
        ports = []
        for m in mappings:
            async def handle(client: trio.SocketStream, m: Mapping = m) -> None:
                peer = client.socket.getpeername()
                await _carry(client, lambda: stack.open_tcp_stream(m.target_host, m.target_port), m,
                             f"{peer[0]}:{peer[1]}")

            listeners = await nursery.start(partial(trio.serve_tcp, handle, m.listen_port, host=m.listen_host))
            ports.append(listeners[0].socket.getsockname()[1])
            log(logger, logging.INFO, "forwarding", mapping=str(m))
        task_status.started(ports)


async def expose(config_path: str, mappings: list[Mapping], *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    async with trio.open_nursery() as nursery:
        _, stack = await _bring_up(config_path, nursery)
        for m in mappings:
            async def handle(tunnel: trio.abc.Stream, m: Mapping = m) -> None:
                host, port = tunnel.remote_address
                await _carry(tunnel, lambda: trio.open_tcp_stream(m.target_host, m.target_port), m,
                             f"{host}:{port}")

            await nursery.start(stack.serve_tcp, handle, m.listen_port)
            log(logger, logging.INFO, "exposing", tunnel_port=m.listen_port,
                target=f"{m.target_host}:{m.target_port}")
        task_status.started()
