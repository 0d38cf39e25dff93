"""The timeout watchdog on trio's fake clock: a guard is cancelled when, and only when, one of its
waiters is still waiting past its deadline."""

from __future__ import annotations

import math

import pytest
import trio
import trio.testing

from kakuremichi.gateway.http.timeouts import Waits, Watchdog, tick_for


class Waiter:
    def __init__(self) -> None:
        self.deadline = math.inf

    async def wait(self, timeout: float, duration: float) -> None:
        self.deadline = trio.current_time() + timeout
        try:
            await trio.sleep(duration)
        finally:
            self.deadline = math.inf


@pytest.fixture
def autojump_clock():
    return trio.testing.MockClock(autojump_threshold=0)


async def test_a_wait_past_its_deadline_cancels_the_guard_and_is_named(nursery, autojump_clock):
    watchdog = Watchdog(tick=0.5)
    nursery.start_soon(watchdog.run)
    quick, slow = Waiter(), Waiter()
    start = trio.current_time()
    with watchdog.guard(quick, slow) as guard:
        await quick.wait(timeout=2, duration=1)
        await slow.wait(timeout=2, duration=100)
    assert guard.scope.cancelled_caught and guard.expired is slow
    assert 2 <= trio.current_time() - start - 1 <= 2.5  # fired within one tick of the deadline


async def test_time_spent_not_waiting_never_expires(nursery, autojump_clock):
    watchdog = Watchdog(tick=0.5)
    nursery.start_soon(watchdog.run)
    waiter = Waiter()
    with watchdog.guard(waiter) as guard:
        for _ in range(10):
            await waiter.wait(timeout=2, duration=1.5)  # each wait within its limit
            await trio.sleep(5)  # busy elsewhere (a pool connect has its own timeout)
        late = Waiter()
        guard.waiters.append(late)  # a waiter joining a running guard counts too
        await late.wait(timeout=1, duration=100)
    assert guard.expired is late


async def test_a_guard_cancelled_by_someone_else_names_no_waiter(nursery, autojump_clock):
    watchdog = Watchdog(tick=0.5)
    nursery.start_soon(watchdog.run)
    waiter = Waiter()
    with watchdog.guard(waiter) as guard:
        guard.scope.cancel()  # a withdrawn route, say
        await waiter.wait(timeout=1, duration=100)
    assert guard.scope.cancelled_caught and guard.expired is None
    assert not watchdog._guards  # left guards are forgotten


def test_tick_follows_the_shortest_timeout():
    assert tick_for(60.0, math.inf) == 1.0
    assert tick_for(0.2, 60.0) == pytest.approx(0.05)


async def test_waits_keep_read_and_write_apart_and_restart_only_a_read_under_way(autojump_clock):
    waits = Waits()
    waits.restart_read(5)  # no read under way: nothing to restart
    assert waits.deadline == math.inf
    start = trio.current_time()
    waits.start_read(10)
    waits.start_write(2)
    assert waits.deadline == start + 2
    waits.end_write()  # the write's end leaves the read's deadline
    assert waits.deadline == start + 10
    await trio.sleep(8)
    waits.restart_read(10)  # the peer showed it is alive: the read gets its time again
    assert waits.deadline == start + 18
    waits.end_read()
    assert waits.deadline == math.inf
