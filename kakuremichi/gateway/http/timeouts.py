"""Timeouts of many proxied connections, enforced by one task instead of a cancel scope per wait.

A proxied request waits about four times (request head, write to the agent, response head, write to the
client). A trio deadline on each wait costs a cancel scope entered and left, with its deadline heap
entries: an eighth of the gateway's CPU per request. Here each connection or stream is a `Waits`: a wait
starts and ends through its methods, which only note when it gives up; one `Guard` — a cancel scope —
covers all the waits of a stretch of work, and the watchdog looks every `tick` and cancels the guard of
a waiter still waiting past its deadline. A timeout fires up to one tick late, which is nothing
against limits of seconds.
"""

from __future__ import annotations

import math
from typing import Protocol

import trio


class Waiter(Protocol):
    """Something that waits: `deadline` is when its current wait gives up (inf while not waiting); a
    `Waits`, or anything else with a deadline."""

    deadline: float


class Waits:
    """When the current read and write of one connection or stream give up (inf: not waiting), changed
    only by these methods. Reads and writes are apart: one task may wait to read while another waits to
    write (a request body pumped to the agent while its response is awaited), and the end of one wait
    must not clear the other's deadline."""

    __slots__ = ("read_until", "write_until")

    def __init__(self) -> None:
        self.read_until = self.write_until = math.inf

    @property
    def deadline(self) -> float:
        """For the watchdog (read once a tick): the sooner of the two."""
        return min(self.read_until, self.write_until)

    def start_read(self, timeout: float) -> None:
        self.read_until = trio.current_time() + timeout

    def restart_read(self, timeout: float) -> None:
        """The read under way, if any, gets `timeout` again from now (the peer showed it is alive)."""
        if self.read_until != math.inf:
            self.read_until = trio.current_time() + timeout

    def end_read(self) -> None:
        self.read_until = math.inf

    def start_write(self, timeout: float) -> None:
        self.write_until = trio.current_time() + timeout

    def end_write(self) -> None:
        self.write_until = math.inf


class Guard:
    """A cancel scope over `waiters`, cancelled by the watchdog when one of them waits past its
    deadline (then `expired` names it) or by anyone holding `scope` (a withdrawn route, say)."""

    __slots__ = ("_guards", "scope", "waiters", "expired")

    def __init__(self, guards: set[Guard], waiters: list[Waiter]) -> None:
        self._guards = guards
        self.scope = trio.CancelScope()
        self.waiters = waiters
        self.expired: Waiter | None = None

    def __enter__(self) -> Guard:
        self.scope.__enter__()
        self._guards.add(self)
        return self

    def __exit__(self, *exc_info) -> bool:
        self._guards.discard(self)
        return self.scope.__exit__(*exc_info)

    def check(self, now: float) -> None:
        for waiter in self.waiters:
            if waiter.deadline <= now:
                self.expired = waiter
                self.scope.cancel()
                return


class Watchdog:
    """Cancels guards whose waiters overstay; `run` must be running for any timeout to fire."""

    def __init__(self, tick: float = 1.0) -> None:
        self.tick = tick
        self._guards: set[Guard] = set()

    def guard(self, *waiters: Waiter) -> Guard:
        """A guard over `waiters`; more can join its `waiters` list while it runs."""
        return Guard(self._guards, list(waiters))

    async def run(self) -> None:
        while True:
            await trio.sleep(self.tick)
            now = trio.current_time()
            for guard in self._guards:
                if guard.expired is None:
                    guard.check(now)


def tick_for(*timeouts: float) -> float:
    """A watchdog tick fine enough for the shortest of `timeouts` (a quarter of it), at most a second."""
    finite = [t for t in timeouts if t != math.inf]
    return min([1.0] + [t / 4 for t in finite])
