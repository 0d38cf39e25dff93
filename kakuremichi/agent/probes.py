"""The agent's health probes: each backend with a health check has its local target probed on its interval (the
state machine is kakuremichi.health), and every transition goes to control at once, which pushes it to the
gateways. What control has not heard (it was down) is told again when the link comes back.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import trio

from kakuremichi.agent.targets import connect
from kakuremichi.controlclient import NotConnected
from kakuremichi.health import HealthState, HttpProbe
from kakuremichi.logs import log
from kakuremichi.protocol import BackendHealth, HealthCheck, TunnelMapping
from kakuremichi.values import Target

logger = logging.getLogger("kakuremichi.agent.health")
READ_SIZE = 4096
MAX_ERROR = 500  # characters of a failure's reason control keeps

Report = Callable[[BackendHealth], Awaitable[None]]


async def probe(target: Target, check: HealthCheck, host: str) -> str | None:
    """One probe of `target`: None when it passed, else why not."""
    with trio.move_on_after(check.timeout_seconds):
        try:
            stream = await connect(target, check.timeout_seconds)
        except OSError as exc:
            return exc.strerror or str(exc)
        async with stream:
            if check.type != "http":
                return None
            request = HttpProbe(check, host)
            try:
                await stream.send_all(request.request)
                while True:
                    verdict = request.receive(await stream.receive_some(READ_SIZE))
                    if verdict is not ...:
                        return verdict
            except (OSError, trio.BrokenResourceError) as exc:
                return f"connection failed: {exc}"
    return f"no answer within {check.timeout_seconds:g} s"


class Probes:
    """The running probes, one task per backend, following the configs control pushes."""

    def __init__(self) -> None:
        self.report: Report | None = None  # set once the link to control exists
        self.statuses: dict[str, BackendHealth] = {}  # backend id → its last transition
        self._tasks: dict[tuple, trio.CancelScope] = {}  # (backend id, target, check, host) → its probe task
        self._nursery: trio.Nursery | None = None

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    def update(self, tunnels: list[TunnelMapping]) -> None:
        """Probe what `tunnels` ask for; a probe whose backend, target or check changed starts over."""
        wanted = {(m.backend_id, m.target, m.health_check, m.domain) for m in tunnels
                  if m.enabled and m.backend_id and m.health_check and m.health_check.type != "none"}
        for key in set(self._tasks) - wanted:
            self._tasks.pop(key).cancel()
            self.statuses.pop(key[0], None)
        for key in wanted - set(self._tasks):
            self._tasks[key] = scope = trio.CancelScope()
            self._nursery.start_soon(self._probe, key, scope)

    async def resend(self) -> None:
        """Tell control every status again (after it reconnected: it may have missed transitions)."""
        for status in list(self.statuses.values()):
            await self._send(status)

    async def _probe(self, key: tuple, scope: trio.CancelScope) -> None:
        backend_id, target_text, check, host = key
        target = Target.parse(target_text)
        state = HealthState(check, trio.current_time())
        with scope:
            while True:
                await trio.sleep_until(state.next_probe)
                error = await probe(target, check, host)
                transition = state.record(trio.current_time(), error)
                if transition is not None:
                    log(logger, logging.INFO if transition.status == "healthy" else logging.WARNING,
                        "backend health changed", backend=backend_id, target=target_text, status=transition.status,
                        error=transition.error or "-")
                    error = transition.error and transition.error[:MAX_ERROR]
                    self.statuses[backend_id] = status = BackendHealth(backend_id, transition.status, error)
                    await self._send(status)

    async def _send(self, status: BackendHealth) -> None:
        if self.report is None:
            return
        try:
            await self.report(status)
        except NotConnected as exc:  # told again on reconnection (resend)
            log(logger, logging.DEBUG, "health report not sent", backend=status.backend_id, error=str(exc))
