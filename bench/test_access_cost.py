"""Issue 16: what access control costs per request. One deployment, two tunnels to the same app: one public, one
password-protected, whose requests carry a session cookie that the gateway checks on each (HMAC, claims, policy);
wrk runs alternate between them in the same rounds, so both see the same machine."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest
from measure import fresh_directory, serves_http_app, wrk

from kakuremichi.access import tokens
from kakuremichi.access.gate import Gate
from kakuremichi.access.policy import AccessPolicy
from kakuremichi.access.tokens import Claims
from tests.deployment import Deployment, wait_for

HERE = Path(__file__).parent
ROUNDS = 3
SECONDS = 3
CONNECTIONS = 16


@pytest.fixture(scope="module")
def deployment():
    d = Deployment(fresh_directory("access_cost"), apps={"app": (str(HERE / "http_app.py"),)}, gateways=("gw",))
    try:
        d.tunnel("public.bench.test", "app")
        d.tunnel("locked.bench.test", "app", access={"mode": "password", "password": "bench password"})
        wait_for(lambda: serves_http_app(d, "gw", "public.bench.test"), 30, "the public tunnel to serve")
        wait_for(lambda: (r := d.get("gw", "locked.bench.test")) is not None and r.status_code == 401, 30,
                 "the protected tunnel to ask for a login")
        yield d
    finally:
        d.close()


def test_protected_request_cost(deployment, record):
    d = deployment
    login = httpx.post(d.url("gw", "/.kakuremichi/login"), headers={"host": "locked.bench.test"},
                       data={"password": "bench password", "next": "/"})
    cookie = f"Cookie: kakuremichi_session={login.cookies['kakuremichi_session']}"
    assert httpx.get(d.url("gw"), headers={"host": "locked.bench.test", "cookie": cookie[8:]}).status_code == 200
    totals = {"public": 0.0, "protected": 0.0}
    for _ in range(ROUNDS):
        totals["public"] += wrk(d.url("gw"), "public.bench.test", CONNECTIONS, SECONDS)["rps"]
        run = wrk(d.url("gw"), "locked.bench.test", CONNECTIONS, SECONDS, headers=(cookie,))
        assert run["errors"] == 0, "a protected request was refused"
        totals["protected"] += run["rps"]
    public, protected = totals["public"] / ROUNDS, totals["protected"] / ROUNDS
    record("access", rps_public=public, rps_protected=protected, ratio_rps_protected_vs_public=protected / public,
           gate_us_public=_gate_microseconds(None), gate_us_protected=_gate_microseconds(LOCKED))


LOCKED = AccessPolicy("t", b"k" * 32, mode="password", password_hash="unused")
_SESSION = tokens.sign(LOCKED.key, "session", Claims(tunnel="t", expires=time.time() + 3600, issued=time.time(),
                                                     user="password")).encode()


def _gate_microseconds(policy: AccessPolicy | None, checks: int = 20000) -> float:
    """The gate's own time per request, in process: a browser-like request with the forwarding headers."""
    headers = [(b"host", b"locked.bench.test"), (b"user-agent", b"wrk"), (b"accept", b"*/*"),
               (b"cookie", b"kakuremichi_session=" + _SESSION), (b"x-forwarded-for", b"127.0.0.1"),
               (b"x-real-ip", b"127.0.0.1"), (b"forwarded", b"for=127.0.0.1;host=locked.bench.test;proto=http")]
    gate = Gate()
    start = time.perf_counter()
    for _ in range(checks):
        gate.check(policy, method=b"GET", target=b"/", headers=headers, client_ip="127.0.0.1",
                   host="locked.bench.test", scheme="http")
    return (time.perf_counter() - start) / checks * 1e6
