"""The agent's way out: a connection to host:port through the exit of one of its gateways.

Gateways whose WireGuard session is alive are tried first, in config order; one that does not answer
(connect refused or timed out, reset before the SOCKS5 reply) is remembered as failed for a while and the
next one is tried, before the local client hears anything. A SOCKS5 failure reply is the destination's
answer, the same from every gateway, so it ends the attempt.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import trio

from kakuremichi.egress import socks5
from kakuremichi.egress.trio_socks5 import request_connect
from kakuremichi.logs import log
from kakuremichi.protocol import EXIT_KEEPALIVE, EXIT_PORT
from kakuremichi.wg.constants import REKEY_TIMEOUT

logger = logging.getLogger("kakuremichi.agent.exit")

ATTEMPT_TIMEOUT = 3.0  # for the TCP connect to a gateway's exit over a live session; a fresh one gets
# REKEY_TIMEOUT more, the time WireGuard waits before it sends a lost handshake initiation again
REPLY_TIMEOUT = 20.0  # the gateway's own connect to the destination takes up to its CONNECT_TIMEOUT (10 s)
FAILURE_MEMORY = 30.0  # seconds a gateway that did not answer goes to the back of the line


@dataclass(frozen=True)
class ExitRoute:
    """One way out: from an exit tunnel's agent address to a gateway's address in that tunnel's subnet."""

    agent_ip: str
    gateway_ip: str


class ExitFailed(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code


class ExitDialer:
    def __init__(self, node, *, attempt_timeout: float = ATTEMPT_TIMEOUT,
                 keepalive: tuple[float, float, int] = EXIT_KEEPALIVE) -> None:
        self.node = node
        self.attempt_timeout = attempt_timeout
        self.keepalive = keepalive
        self._failed: dict[str, float] = {}  # gateway address -> when it last failed (device clock)

    def mark_failed(self, gateway_ip: str) -> None:
        """Put a gateway at the back of the line for FAILURE_MEMORY seconds."""
        self._failed[gateway_ip] = self.node.now()

    def candidates(self, routes: list[ExitRoute]) -> list[ExitRoute]:
        """`routes` in the order to try: live and not recently failed first, config order within."""
        now = self.node.now()

        def rank(indexed: tuple[int, ExitRoute]) -> tuple[bool, bool, int]:
            index, route = indexed
            failed = self._failed.get(route.gateway_ip)
            recently_failed = failed is not None and now - failed < FAILURE_MEMORY
            return (recently_failed, not self.node.peer_alive(route.gateway_ip), index)

        return [route for _i, route in sorted(enumerate(routes), key=rank)]

    async def open(self, routes: list[ExitRoute], host: str, port: int) -> tuple[trio.abc.Stream, bytes]:
        """A stream to host:port through the first gateway that answers, and the destination's first bytes
        if they came with the gateway's reply; raises ExitFailed."""
        if not routes:
            raise ExitFailed(socks5.NETWORK_UNREACHABLE, "no gateway has connected for the exit tunnels yet")
        try:
            socks5.encode_address(host, port)
        except ValueError as exc:
            raise ExitFailed(socks5.GENERAL_FAILURE, str(exc)) from None
        errors = []
        for route in self.candidates(routes):
            try:
                stream, early = await self._attempt(route, host, port)
            except (OSError, trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError) as exc:
                self.mark_failed(route.gateway_ip)
                reason = str(exc) or type(exc).__name__
                errors.append(f"{route.gateway_ip}: {reason}")
                log(logger, logging.WARNING, "exit gateway did not answer; trying the next", gateway=route.gateway_ip,
                    source=route.agent_ip, error=reason)
                continue
            self._failed.pop(route.gateway_ip, None)
            return stream, early
        raise ExitFailed(socks5.NETWORK_UNREACHABLE, "no gateway's exit answered (" + "; ".join(errors) + ")")

    def connect_timeout(self, gateway_ip: str) -> float:
        """How long a connect to `gateway_ip`'s exit may take before the next gateway is tried."""
        return self.attempt_timeout + (0 if self.node.peer_alive(gateway_ip) else REKEY_TIMEOUT)

    async def _attempt(self, route: ExitRoute, host: str, port: int) -> tuple[trio.abc.Stream, bytes]:
        with trio.fail_after(self.connect_timeout(route.gateway_ip)):
            stream = await self.node.stack.open_tcp_stream(route.gateway_ip, EXIT_PORT,
                                                           local_address=route.agent_ip)
        stream.set_keepalive(*self.keepalive)  # a gateway gone for good ends the local client's connection too
        try:
            with trio.fail_after(REPLY_TIMEOUT):
                event, trailing = await request_connect(stream, host, port)
        except BaseException:
            stream.abort()
            raise
        if isinstance(event, socks5.Failed):
            await trio.aclose_forcefully(stream)
            raise ExitFailed(event.code, f"the gateway's exit answered: {event.reason}")
        return stream, trailing

