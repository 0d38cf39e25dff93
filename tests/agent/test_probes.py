"""The agent's health probes against real local sockets: HTTP status, refused connections, reports."""

from __future__ import annotations

import functools

import trio

from kakuremichi.agent.probes import Probes, probe
from kakuremichi.protocol import HealthCheck, TunnelMapping
from kakuremichi.values import Target

FAST = dict(interval_seconds=0.1, timeout_seconds=1.0, healthy_threshold=2, unhealthy_threshold=2)


async def _app(status: list[int], stream: trio.SocketStream) -> None:
    """An HTTP server answering each request with status[0] (the test changes it)."""
    async with stream:
        request = b""
        while b"\r\n\r\n" not in request:
            data = await stream.receive_some(4096)
            if not data:
                return
            request += data
        assert request.startswith(b"GET /health HTTP/1.1\r\n") and b"host: app.example.com" in request.lower()
        await stream.send_all(b"HTTP/1.1 %d X\r\ncontent-length: 0\r\n\r\n" % status[0])


async def _serve(nursery, status: list[int]) -> int:
    listeners = await nursery.start(functools.partial(trio.serve_tcp, functools.partial(_app, status), 0,
                                                      host="127.0.0.1"))
    return listeners[0].socket.getsockname()[1]


async def test_an_http_probe_judges_the_status_and_a_closed_port_fails(nursery):
    status = [200]
    port = await _serve(nursery, status)
    check = HealthCheck("http", "/health", **FAST)
    assert await probe(Target("127.0.0.1", port), check, "app.example.com") is None
    status[0] = 500
    assert await probe(Target("127.0.0.1", port), check, "app.example.com") == "HTTP status 500"
    with trio.socket.socket() as unused:
        await unused.bind(("127.0.0.1", 0))
        closed = unused.getsockname()[1]
    assert await probe(Target("127.0.0.1", closed), HealthCheck("tcp", **FAST), "h") is not None
    assert await probe(Target("127.0.0.1", port), HealthCheck("tcp", **FAST), "h") is None


async def test_transitions_are_reported_as_they_happen(nursery):
    status = [200]
    port = await _serve(nursery, status)
    probes = Probes()
    reports = []
    changed = trio.Event()

    async def report(message):
        reports.append((message.backend_id, message.status, message.error))
        changed.set()

    probes.report = report
    await nursery.start(probes.run)
    mapping = TunnelMapping("t1", "app.example.com", "10.1.0.3", f"127.0.0.1:{port}", backend_id="b2",
                            health_check=HealthCheck("http", "/health", **FAST))
    probes.update([mapping])

    async def next_report():
        nonlocal changed
        with trio.fail_after(10):
            await changed.wait()
        changed = trio.Event()
        return reports[-1]

    assert await next_report() == ("b2", "healthy", None)
    status[0] = 500
    assert await next_report() == ("b2", "unhealthy", "HTTP status 500")
    status[0] = 204
    assert await next_report() == ("b2", "healthy", None)
    probes.update([])  # no longer this agent's: its probe stops
    assert probes.statuses == {}
