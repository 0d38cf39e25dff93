"""Several backends per tunnel, as separate processes: two agents with their own apps behind one tunnel, shares
by weight, priorities as fallbacks, health checks taking an app out and back, an agent killed under load, and
draining."""

from __future__ import annotations

import signal
import threading
import time
from collections import Counter

import httpx
import pytest

from tests.deployment import Deployment, wait_for
from tests.e2e.test_tunnel_end_to_end import APP  # answers its name; /health as last set by /set-health/<status>

DOMAIN = "app.example.test"
MB = 1024 * 1024
FAST_CHECK = {"type": "http", "path": "/health", "intervalSeconds": 0.2, "timeoutSeconds": 1,
              "healthyThreshold": 2, "unhealthyThreshold": 2}


class Tunnel:
    """Two agents, `home` serving app one and `away` serving app two, behind one tunnel on gateway gw1."""

    def __init__(self, tmp) -> None:
        self.d = Deployment(tmp, apps={"one": ("-c", APP), "two": ("-c", APP)}, gateways=("gw1",))
        self.away_id, self.away = self.d.add_agent("away")
        self.id = self.d.tunnel(DOMAIN, "one")["id"]

    def set(self, one: dict, two: dict, **tunnel) -> list[dict]:
        """The tunnel's two backends (one at home, two away) with these settings, kept as the same backends
        (by id) once they exist; their API view."""
        ids = [{"id": b["id"]} for b in self.backends()]
        ids += [{}] * (2 - len(ids))
        response = self.d.api.patch(f"/api/tunnels/{self.id}", json={**tunnel, "backends": [
            {**ids[0], "agentId": self.d.agent_id, "target": f"127.0.0.1:{self.d.apps['one']}", **one},
            {**ids[1], "agentId": self.away_id, "target": f"127.0.0.1:{self.d.apps['two']}", **two}]})
        assert response.status_code == 200, response.text
        return response.json()["backends"]

    def backends(self) -> list[dict]:
        return self.d.api.get(f"/api/tunnels/{self.id}").json()["backends"]

    def shares(self, count: int, client: httpx.Client) -> Counter:
        found = Counter()
        for _ in range(count):
            response = client.get(self.d.url("gw1", "/"), headers={"host": DOMAIN})
            found[response.json()["app"] if response.status_code == 200 else response.status_code] += 1
        return found

    def app_health(self, app: str, status: int) -> None:
        assert httpx.get(f"http://127.0.0.1:{self.d.apps[app]}/set-health/{status}").status_code == 204

    def wait_for_shares(self, client: httpx.Client, expected: set, what: str, timeout: float = 30) -> float:
        """Seconds until 20 requests in a row are answered by exactly the `expected` apps."""
        def answered() -> bool:
            try:
                return set(self.shares(20, client)) == expected
            except httpx.TransportError:  # the gateway is still starting
                return False

        return wait_for(answered, timeout, what)


@pytest.fixture(scope="module")
def tunnel(tmp_path_factory):
    t = Tunnel(tmp_path_factory.mktemp("backends"))
    try:
        yield t
    finally:
        t.d.close()


@pytest.fixture
def client():
    with httpx.Client(timeout=20) as c:
        yield c


def test_weights_three_to_one_share_the_requests(tunnel, client):
    tunnel.set({"weight": 3}, {"weight": 1})
    tunnel.wait_for_shares(client, {"one", "two"}, "both agents to serve")
    shares = tunnel.shares(2000, client)
    print(f"\nweights 3:1 over 2,000 requests: {dict(shares)}")
    assert set(shares) == {"one", "two"}
    assert abs(shares["one"] / 2000 - 0.75) <= 0.05


def test_priority_zero_is_served_and_priority_one_only_when_it_is_down(tunnel, client):
    tunnel.set({"priority": 0}, {"priority": 1}, healthCheck=FAST_CHECK)
    tunnel.wait_for_shares(client, {"one"}, "priority 0 alone to serve")
    assert tunnel.shares(200, client) == {"one": 200}
    try:
        tunnel.app_health("one", 500)
        took = tunnel.wait_for_shares(client, {"two"}, "the fallback to take over")
        print(f"\npriority 0 unhealthy: fallback serving after {took:.1f} s")
        assert tunnel.shares(100, client) == {"two": 100}
    finally:
        tunnel.app_health("one", 200)
    tunnel.wait_for_shares(client, {"one"}, "priority 0 to be back")


def test_an_app_failing_its_health_check_leaves_the_pool_and_rejoins(tunnel, client):
    tunnel.set({}, {}, healthCheck=FAST_CHECK)
    tunnel.wait_for_shares(client, {"one", "two"}, "both to serve")
    try:
        tunnel.app_health("two", 500)
        left = tunnel.wait_for_shares(client, {"one"}, "app two to leave the pool")
        down = next(b for b in tunnel.backends() if b["agentId"] == tunnel.away_id)["health"]
        assert down["status"] == "unhealthy" and down["error"] == "HTTP status 500" and down["lastCheck"]
        assert tunnel.shares(100, client) == {"one": 100}
    finally:
        tunnel.app_health("two", 200)
    rejoined = tunnel.wait_for_shares(client, {"one", "two"}, "app two to rejoin")
    print(f"\nhealth path 500: out of the pool after {left:.1f} s, back {rejoined:.1f} s after recovering")
    assert next(b for b in tunnel.backends() if b["agentId"] == tunnel.away_id)["health"]["status"] == "healthy"


def test_draining_lets_a_long_download_finish_while_new_requests_go_elsewhere(tunnel, client):
    tunnel.set({"priority": 0}, {"priority": 1}, healthCheck={"type": "none"})
    tunnel.wait_for_shares(client, {"one"}, "priority 0 alone to serve")
    size, received = 50 * MB, 0
    with httpx.Client(timeout=30) as downloader, downloader.stream(
            "GET", tunnel.d.url("gw1", f"/bytes/{size}"), headers={"host": DOMAIN}) as download:
        chunks = download.iter_bytes()
        while received < 2 * MB:
            received += len(next(chunks))
        tunnel.set({"priority": 0, "draining": True}, {"priority": 1})
        tunnel.wait_for_shares(client, {"two"}, "new requests to go to the other backend")
        wait_for(lambda: tunnel.backends()[0]["activeConnections"] == 1, 10, "the API to show the download")
        for chunk in chunks:
            received += len(chunk)
    assert received == size
    wait_for(lambda: tunnel.backends()[0]["activeConnections"] == 0, 10, "the drained backend to have none")


def test_an_agent_killed_under_load_is_failed_over_within_three_seconds(tmp_path):
    t = Tunnel(tmp_path)
    try:
        t.set({}, {})
        with httpx.Client(timeout=20) as c:
            t.wait_for_shares(c, {"one", "two"}, "both agents to serve")
        results: list[tuple[float, bool]] = []
        stop = threading.Event()

        def load() -> None:
            with httpx.Client(timeout=20) as c:
                while not stop.is_set():
                    started = time.monotonic()
                    try:
                        ok = c.get(t.d.url("gw1", "/"), headers={"host": DOMAIN}).status_code == 200
                    except httpx.HTTPError:
                        ok = False
                    results.append((started, ok))

        threads = [threading.Thread(target=load) for _ in range(16)]
        for thread in threads:
            thread.start()
        time.sleep(2)
        killed = time.monotonic()
        t.away.popen.send_signal(signal.SIGKILL)
        time.sleep(10)
        stop.set()
        for thread in threads:
            thread.join()
        before = [ok for started, ok in results if started < killed]
        first = [ok for started, ok in results if killed <= started < killed + 3]
        after = [ok for started, ok in results if started >= killed + 3]
        print(f"\nSIGKILL under 16 connections: {before.count(False)} of {len(before)} failed before, "
              f"{first.count(False)} of {len(first)} in the first 3 s, {after.count(False)} of {len(after)} after")
        assert after and all(after)
    finally:
        t.d.close()
