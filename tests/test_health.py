"""The health core: thresholds, intervals and transitions on a fake clock, and the HTTP probe's bytes."""

from kakuremichi.health import HealthState, HttpProbe
from kakuremichi.protocol import HealthCheck

CHECK = HealthCheck(type="http", path="/healthz", interval_seconds=5, healthy_threshold=2, unhealthy_threshold=3)


def test_the_first_result_decides_then_thresholds_apply():
    state = HealthState(CHECK, now=100.0)
    assert state.next_probe == 100.0
    first = state.record(100.0, None)
    assert (first.status, first.at) == ("healthy", 100.0) and state.next_probe == 105.0
    assert state.record(105.0, "HTTP status 500") is None
    assert state.record(110.0, "HTTP status 500") is None
    down = state.record(115.0, "HTTP status 503")
    assert (down.status, down.error, down.at) == ("unhealthy", "HTTP status 503", 115.0)
    assert state.record(120.0, None) is None
    up = state.record(125.0, None)
    assert (up.status, up.error) == ("healthy", None) and state.status == "healthy"


def test_a_success_between_failures_starts_the_count_again():
    state = HealthState(CHECK, now=0.0)
    state.record(0.0, None)
    for now, error in ((5, "refused"), (10, "refused"), (15, None), (20, "refused"), (25, "refused")):
        assert state.record(now, error) is None
    assert state.record(30, "refused").status == "unhealthy"


def test_a_first_failure_is_unhealthy_at_once():
    state = HealthState(CHECK, now=0.0)
    assert state.record(0.0, "connection refused").status == "unhealthy"
    assert state.error == "connection refused"


def test_the_http_probe_asks_for_the_path_and_judges_the_status():
    probe = HttpProbe(CHECK, "localhost:8080")
    assert probe.request.startswith(b"GET /healthz HTTP/1.1\r\n")
    assert b"host: localhost:8080\r\n" in probe.request.lower()
    assert probe.receive(b"HTTP/1.1 200 OK\r\nContent-") is ...
    assert probe.receive(b"Length: 0\r\n\r\n") is None
    assert HttpProbe(CHECK, "h").receive(b"HTTP/1.1 500 Internal Server Error\r\n\r\n") == "HTTP status 500"
    assert HttpProbe(CHECK, "h").receive(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n") is None


def test_an_expected_status_and_broken_answers():
    teapot = HealthCheck(type="http", expect_status=418)
    assert HttpProbe(teapot, "h").receive(b"HTTP/1.1 418 I'm a teapot\r\n\r\n") is None
    assert HttpProbe(teapot, "h").receive(b"HTTP/1.1 200 OK\r\n\r\n") == "HTTP status 200, expected 418"
    assert "malformed" in HttpProbe(CHECK, "h").receive(b"SSH-2.0-OpenSSH\r\n\r\n")
    closed = HttpProbe(CHECK, "h")
    assert "closed before the response" in closed.receive(b"")
