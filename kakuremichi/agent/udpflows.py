"""udp tunnels at the agent: datagrams a gateway sends to a udp tunnel's address (agent_ip:TUNNEL_PORT) go to
the tunnel's target, each flow (gateway address and source port: one client each) from a UDP socket of its
own, and the target's answers go back the same way. A flow ends after the tunnel's idle timeout; answers
refused by the target (ICMP port unreachable) are counted in `refused`.
"""

from __future__ import annotations

import errno
import logging
import socket

import trio

from kakuremichi.logs import log
from kakuremichi.protocol import TUNNEL_PORT, UDP_IDLE_TIMEOUT, TunnelMapping
from kakuremichi.values import Target

logger = logging.getLogger("kakuremichi.agent.udp")
FLOW_QUEUE = 256  # datagrams waiting for a flow's socket; more are dropped, as a full socket buffer would
MAX_DATAGRAM = 65535


class UdpForwarder:
    def __init__(self, stack) -> None:
        self._stack = stack
        self._served: dict[str, tuple[tuple, trio.CancelScope]] = {}  # agent address → ((target, idle), scope)
        self._nursery: trio.Nursery | None = None
        self.refused = 0
        self.flows = 0

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    async def update(self, tunnels: list[TunnelMapping]) -> None:
        """Serve the enabled udp tunnels of a config; a changed target or timeout starts its flows afresh."""
        wanted = {t.agent_ip: (Target.parse(t.target), t.udp_idle_timeout or UDP_IDLE_TIMEOUT)
                  for t in tunnels if t.protocol == "udp" and t.enabled}
        for address, (settings, scope) in list(self._served.items()):
            if wanted.get(address) != settings:
                scope.cancel()
                del self._served[address]
        for address, settings in wanted.items():
            if address not in self._served:
                self._served[address] = (settings, await self._nursery.start(self._serve, address, *settings))

    async def _serve(self, address: str, target: Target, idle: float, *, task_status) -> None:
        with trio.CancelScope() as scope, self._stack.udp_socket(TUNNEL_PORT, address=address) as inner:
            task_status.started(scope)
            flows: dict[tuple[str, int], trio.MemorySendChannel] = {}
            try:
                async with trio.open_nursery() as nursery:
                    while True:
                        data, source = await inner.recvfrom()
                        queue = flows.get(source)
                        if queue is None:
                            queue, receive = trio.open_memory_channel(FLOW_QUEUE)
                            flows[source] = queue
                            nursery.start_soon(self._flow, inner, source, target, idle, receive, flows)
                        try:
                            queue.send_nowait(data)
                        except trio.WouldBlock:
                            pass
            except* trio.ClosedResourceError:
                pass  # the tunnel's address went away (deleted: the node drops it before update() is called)

    async def _flow(self, inner, source: tuple[str, int], target: Target, idle: float,
                    datagrams: trio.MemoryReceiveChannel, flows: dict) -> None:
        self.flows += 1
        try:
            family, kind, proto, _, address = (await trio.socket.getaddrinfo(
                target.host, target.port, type=socket.SOCK_DGRAM))[0]
            with trio.socket.socket(family, kind, proto) as sock:
                await sock.connect(address)
                with trio.CancelScope(deadline=trio.current_time() + idle) as scope:
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(self._answers, sock, inner, source, scope, idle)
                        async for data in datagrams:
                            scope.deadline = trio.current_time() + idle
                            try:
                                await sock.send(data)
                            except OSError as exc:
                                self._failed(exc)
        except OSError as exc:
            log(logger, logging.WARNING, "udp target unreachable", target=str(target), error=exc.strerror or str(exc))
        finally:
            self.flows -= 1
            del flows[source]

    async def _answers(self, sock, inner, source: tuple[str, int], scope: trio.CancelScope, idle: float) -> None:
        while True:
            try:
                data = await sock.recv(MAX_DATAGRAM)
            except OSError as exc:
                self._failed(exc)
                continue
            scope.deadline = trio.current_time() + idle
            await inner.sendto(data, source)

    def _failed(self, exc: OSError) -> None:
        if exc.errno != errno.ECONNREFUSED:
            raise exc
        self.refused += 1
