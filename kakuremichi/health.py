"""A backend's health, sans-IO: probe results and a clock in, transitions out; the HTTP probe's bytes.

A probe runs every `interval_seconds` and fails when it takes longer than `timeout_seconds`. A backend starts
`unknown` (counted as up, like one without checks) and its first result decides at once, so a fresh agent
reports where it stands without waiting for thresholds; afterwards it turns unhealthy after
`unhealthy_threshold` failures in a row and back after `healthy_threshold` successes in a row. The Trio driver
that connects to the target is kakuremichi.agent.probes.
"""

from __future__ import annotations

from dataclasses import dataclass

from kakuremichi import h1parse
from kakuremichi.protocol import HealthCheck, HealthStatus

USER_AGENT = b"kakuremichi-health/1"
MAX_RESPONSE_HEAD = 16384  # a probe reads the status, nothing more


@dataclass(frozen=True)
class Transition:
    """The backend's health changed at `at` (the clock the state was fed)."""

    status: HealthStatus
    error: str | None
    at: float


class HealthState:
    """One backend's health: when to probe next, and what each result changes."""

    def __init__(self, check: HealthCheck, now: float) -> None:
        self.check = check
        self.status: HealthStatus = "unknown"
        self.error: str | None = None
        self.checked_at: float | None = None
        self.next_probe = now
        self._streak = 0  # results in a row that disagree with `status`

    def record(self, now: float, error: str | None) -> Transition | None:
        """A probe's result (`error` None: it passed); the transition it causes, if any."""
        self.checked_at = now
        self.next_probe = now + self.check.interval_seconds
        passed = error is None
        if self.status == "unknown":
            return self._become("healthy" if passed else "unhealthy", error, now)
        if passed == (self.status == "healthy"):
            self._streak = 0
            if not passed:
                self.error = error
            return None
        self._streak += 1
        needed = self.check.healthy_threshold if passed else self.check.unhealthy_threshold
        if self._streak < needed:
            return None
        return self._become("healthy" if passed else "unhealthy", error, now)

    def _become(self, status: HealthStatus, error: str | None, now: float) -> Transition:
        self.status, self.error, self._streak = status, error, 0
        return Transition(status, error, now)


class HttpProbe:
    """One HTTP health request: `request` is what to send, `receive` the bytes that come back, until it says
    whether the status fits."""

    def __init__(self, check: HealthCheck, host: str) -> None:
        self.check = check
        self._connection = h1parse.Connection(server=False, max_header_bytes=MAX_RESPONSE_HEAD)
        head = h1parse.Request(b"GET", check.path.encode("utf-8", "replace"),
                               [(b"host", host.encode("idna") if not host.isascii() else host.encode()),
                                (b"user-agent", USER_AGENT), (b"connection", b"close")])
        self.request = self._connection.send(head) + self._connection.send(h1parse.END)

    def receive(self, data: bytes) -> str | None | type[Ellipsis]:
        """Bytes from the target (b"" at its end): `...` while the status is yet to come, None when it passed,
        else why it failed."""
        self._connection.receive_data(data)
        try:
            while True:
                event = self._connection.next_event()
                if isinstance(event, h1parse.InformationalResponse):
                    continue
                if isinstance(event, h1parse.Response):
                    return self._judge(event.status_code)
                if event is h1parse.NEED_DATA:
                    return ...
                return "the connection closed before the response"
        except h1parse.Malformed as exc:
            return f"malformed response: {exc}"

    def _judge(self, status: int) -> str | None:
        expected = self.check.expect_status
        if (status == expected) if expected is not None else 200 <= status < 400:
            return None
        return f"HTTP status {status}" + (f", expected {expected}" if expected is not None else "")
