"""Logins on this gateway's protected http tunnels, told to control at once (`access_granted`): control opens
the tcp/udp tunnels that name the http tunnel (loginTunnelId) to the visitor's address on every gateway.

The gateway's HTTP path only queues a login (it never waits for control); a queue full or control unreachable
drops the report, logged: the visitor's port stays closed until they log in again. The same visitor logging in
again on the same tunnel within REPEAT seconds is not told again (each report makes control push configs).
"""

from __future__ import annotations

import logging

import trio

from kakuremichi.controlclient import ControlClient, NotConnected
from kakuremichi.gateway.portaccess import grant_key
from kakuremichi.logs import log
from kakuremichi.protocol import AccessGranted

logger = logging.getLogger("kakuremichi.gateway.logins")
QUEUE = 256  # logins waiting to be told to control
REPEAT = 30.0  # seconds a repeated login of one address on one tunnel is not reported again


class LoginReports:
    def __init__(self) -> None:
        self._send, self._receive = trio.open_memory_channel[tuple[str, str]](QUEUE)
        self.control: ControlClient | None = None
        self._reported: dict[tuple[str, str], float] = {}  # (tunnel, address) → when last queued

    def logged_in(self, tunnel_id: str, address: str) -> None:
        """A visitor at `address` logged in on the http tunnel `tunnel_id` (called from the HTTP path)."""
        key = grant_key(address)
        now = trio.current_time()
        last = self._reported.get((tunnel_id, key))
        if key is None or (last is not None and last > now - REPEAT):
            return
        self._reported = {seen: at for seen, at in self._reported.items() if at > now - REPEAT}
        self._reported[tunnel_id, key] = now
        try:
            self._send.send_nowait((tunnel_id, key))
        except trio.WouldBlock:
            log(logger, logging.WARNING, "login not reported to control: too many waiting", tunnel=tunnel_id)

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        async for tunnel_id, address in self._receive:
            if self.control is None:
                continue  # a gateway without control (tests): nothing to open
            try:
                await self.control.send(AccessGranted(tunnel_id, address))
            except NotConnected as exc:
                log(logger, logging.WARNING, "login not reported to control", tunnel=tunnel_id, error=str(exc))
