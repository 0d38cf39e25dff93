"""Scenarios 4b and 4c: 100 agents on one gateway (real Agent instances, many per process), then 1,000
tunnels in control and the time a config push takes to reach every connected client.

The tests of this module run in order on one deployment: the second adds tunnels to the first's agents.
"""

from __future__ import annotations

import re
import statistics
import time
from pathlib import Path

import httpx
import pytest

from measure import memory_kb
from tests.deployment import Deployment, Process, wait_for

HERE = Path(__file__).parent
AGENTS = 100
TUNNELS = 1000
PUSHES = 3


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    d = Deployment(tmp_path_factory.mktemp("scale"), apps={"app": (str(HERE / "http_app.py"),)},
                   gateways=("gw",), agent=False, log_level="warning", heartbeat=30)
    try:
        wait_for(lambda: _metric(d, "clients_connected", "gateway") == 1, 30, "the gateway to connect")
        yield d
    finally:
        d.close()


@pytest.fixture(scope="module")
def agents(deployment) -> list[dict]:
    """The swarm's agents as control created them (id, apiKey)."""
    return [deployment.create("agents", f"swarm-{i}") for i in range(AGENTS)]


def _metric(d: Deployment, name: str, role: str) -> float:
    text = d.api.get("/metrics").text
    match = re.search(rf'^kakuremichi_control_{name}{{role="{role}"}} ([\d.e+]+)$', text, re.M)
    return float(match.group(1)) if match else 0.0


def _serves(client: httpx.Client, d: Deployment, domain: str) -> bool:
    try:
        response = client.get(d.url("gw"), headers={"host": domain})
    except httpx.TransportError:
        return False
    return response.status_code == 200 and len(response.content) == 1024


def _domain(agent: int, tunnel: int) -> str:
    return f"t{tunnel}.a{agent}.scale.bench.test"


def test_100_agents_on_one_gateway(deployment, agents, record, tmp_path):
    d = deployment
    for i, agent in enumerate(agents):
        d.tunnel(_domain(i, 0), "app", agent_id=agent["id"])
    (tmp_path / "keys").write_text("\n".join(agent["apiKey"] for agent in agents))
    gateway = d.gateways["gw"][0].popen.pid
    gateway_before = memory_kb(gateway)["rss"]

    start = time.perf_counter()
    swarm = d.track(Process(str(HERE / "agent_swarm.py"), d.ws_url, str(tmp_path / "keys"), ready="ready",
                            log=d.tmp / "swarm.log", env=d.env))
    wait_for(lambda: _metric(d, "clients_connected", "agent") == AGENTS, 120, "every agent to connect")
    online = time.perf_counter() - start
    pending = set(range(AGENTS))
    with httpx.Client(timeout=5) as client:
        def all_served() -> bool:
            pending.difference_update({i for i in list(pending) if _serves(client, d, _domain(i, 0))})
            return not pending

        wait_for(all_served, 180, "every agent's tunnel to serve")
    serving = time.perf_counter() - start
    time.sleep(1)
    swarm_memory = memory_kb(swarm.popen.pid)
    record("scale_agents", agents=AGENTS, seconds_until_all_online=online, seconds_until_all_serving=serving,
           gateway_rss_mb=memory_kb(gateway)["rss"] / 1024, gateway_peak_rss_mb=memory_kb(gateway)["hwm"] / 1024,
           gateway_kb_per_agent=(memory_kb(gateway)["rss"] - gateway_before) / AGENTS,
           swarm_process_rss_mb=swarm_memory["rss"] / 1024, swarm_kb_per_agent=swarm_memory["rss"] / AGENTS)


def test_1000_tunnels_and_config_push(deployment, agents, record):
    d = deployment
    existing = AGENTS  # one per agent from the previous test
    start = time.perf_counter()
    for n in range(existing, TUNNELS):
        agent, tunnel = n % AGENTS, n // AGENTS
        d.tunnel(_domain(agent, tunnel), "app", agent_id=agents[agent]["id"])
        if n % 50 == 0: print(n, time.perf_counter() - start, flush=True)
    created = time.perf_counter() - start
    assert d.api.get("/api/tunnels", params={"limit": 1}).json()["total"] == TUNNELS

    clients = AGENTS + 1
    settle = wait_for(lambda: _quiet(d), 300, "every client to acknowledge the last tunnel")
    latencies = []
    tunnel_id = d.api.get("/api/tunnels", params={"limit": 1}).json()["items"][0]["id"]
    for i in range(PUSHES):
        acks = _acks(d)
        start = time.perf_counter()
        response = d.api.patch(f"/api/tunnels/{tunnel_id}", json={"description": f"push {i}"})
        assert response.status_code == 200, response.text
        wait_for(lambda: _acks(d) >= acks + clients, 120, "every client to acknowledge the push")
        latencies.append(time.perf_counter() - start)
    with httpx.Client(timeout=5) as client:  # the last tunnel of some agents works end to end
        unserved = [a for a in range(0, AGENTS, 10) if not _serves(client, d, _domain(a, TUNNELS // AGENTS - 1))]
    gateway = memory_kb(d.gateways["gw"][0].popen.pid)
    record("scale_tunnels", tunnels=TUNNELS, clients=clients, create_seconds=created,
           tunnels_created_per_s=(TUNNELS - existing) / created, seconds_until_clients_caught_up=settle,
           push_to_all_clients_seconds_median=statistics.median(latencies),
           push_to_all_clients_seconds_max=max(latencies), gateway_rss_mb=gateway["rss"] / 1024,
           gateway_peak_rss_mb=gateway["hwm"] / 1024, control_rss_mb=memory_kb(d.control.popen.pid)["rss"] / 1024)
    assert not unserved, f"tunnels of agents {unserved} do not serve"


def _acks(d: Deployment) -> float:
    return _metric(d, "config_acks_total", "agent") + _metric(d, "config_acks_total", "gateway")


def _quiet(d: Deployment) -> bool:
    """Every config pushed has been acknowledged, and nothing new was pushed for a moment."""
    pushed = _metric(d, "config_pushes_total", "agent") + _metric(d, "config_pushes_total", "gateway")
    if _acks(d) < pushed:
        return False
    time.sleep(0.5)
    return pushed == _metric(d, "config_pushes_total", "agent") + _metric(d, "config_pushes_total", "gateway")
