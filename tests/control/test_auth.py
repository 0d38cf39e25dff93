"""The per-address guards against guessing: the throttle and the log limit, on a fake clock."""

from __future__ import annotations

import logging

from kakuremichi.control import auth


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_throttle_lets_a_burst_through_then_one_attempt_per_refill():
    clock = Clock()
    throttle = auth.Throttle(capacity=3, refill=10.0, clock=clock)
    for _ in range(3):
        assert throttle.wait("198.51.100.1") == 0
        throttle.failed("198.51.100.1")
    assert throttle.wait("198.51.100.1") == 10.0
    assert throttle.wait("198.51.100.2") == 0  # another address is not held back
    clock.now += 4
    assert throttle.wait("198.51.100.1") == 6.0
    clock.now += 6
    assert throttle.wait("198.51.100.1") == 0
    throttle.failed("198.51.100.1")
    assert throttle.wait("198.51.100.1") == 10.0


def test_both_forget_addresses_beyond_their_bound():
    """Scanners from ever-new addresses must not grow the tables without bound."""
    clock = Clock()
    throttle = auth.Throttle(capacity=1, refill=10.0, clock=clock)
    failures = auth.FailureLog(logging.getLogger("test.auth"), "refused", clock=clock)
    for i in range(auth.MAX_TRACKED_ADDRESSES * 3):
        clock.now += 0.01
        remote = f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}"
        throttle.failed(remote)
        failures.record(remote)
    assert len(throttle._buckets) <= auth.MAX_TRACKED_ADDRESSES + 1
    assert len(failures._windows) <= auth.MAX_TRACKED_ADDRESSES + 1


def test_failure_log_writes_a_line_a_minute_per_address_with_the_count(caplog):
    clock = Clock()
    failures = auth.FailureLog(logging.getLogger("test.auth"), "login refused", burst=1, clock=clock)
    caplog.set_level(logging.WARNING, "test.auth")
    for _ in range(100):
        failures.record("198.51.100.1", reason="wrong")
    failures.record("198.51.100.2", reason="wrong")
    assert [r.fields["remote"] for r in caplog.records] == ["198.51.100.1", "198.51.100.2"]
    assert "suppressed" not in caplog.records[0].fields
    clock.now += 60
    failures.record("198.51.100.1", reason="wrong")
    assert len(caplog.records) == 3 and caplog.records[2].fields["suppressed"] == 99
