"""Scenarios 4b and 4c: 1,000 tunnels created in control, 100 agents with ten tunnels each on one gateway
(real Agent instances, many per process), the time a config push takes to reach the clients it
concerns, and the time a new gateway takes to reach every agent.

The tests of this module run in order on one deployment, each building on the one before. Control runs
with its default 30 s heartbeat, as in production.
"""

from __future__ import annotations

import re
import statistics
import time
from pathlib import Path

import httpx
import pytest

from measure import fresh_directory, memory_kb, serves_http_app
from tests.deployment import Deployment, Process, wait_for

HERE = Path(__file__).parent
AGENTS = 100
TUNNELS = 1000
PUSHES = 4


@pytest.fixture(scope="module")
def deployment():
    d = Deployment(fresh_directory("scale"), apps={"app": (str(HERE / "http_app.py"),)},
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


def _domain(agent: int, tunnel: int) -> str:
    return f"t{tunnel}.a{agent}.scale.bench.test"


def test_1000_tunnels_created(deployment, agents, record):
    """Through the REST API, ten per agent, while the gateway is connected and gets each change pushed."""
    d = deployment
    start = time.perf_counter()
    for n in range(TUNNELS):
        agent, tunnel = n % AGENTS, n // AGENTS
        d.tunnel(_domain(agent, tunnel), "app", agent_id=agents[agent]["id"])
    created = time.perf_counter() - start
    assert d.api.get("/api/tunnels", params={"limit": 1}).json()["total"] == TUNNELS
    record("scale_tunnels", tunnels=TUNNELS, create_seconds=created, tunnels_created_per_s=TUNNELS / created)


def test_100_agents_on_one_gateway(deployment, agents, record):
    d = deployment
    keys = d.tmp / "agent-keys"
    keys.write_text("\n".join(agent["apiKey"] for agent in agents))
    gateway = d.gateways["gw"][0].popen.pid
    gateway_before = memory_kb(gateway)["rss"]

    start = time.perf_counter()
    swarm = d.track(Process(str(HERE / "agent_swarm.py"), d.ws_url, str(keys), ready="ready",
                            log=d.tmp / "swarm.log", env=d.env))
    wait_for(lambda: _metric(d, "clients_connected", "agent") == AGENTS, 120, "every agent to connect")
    online = time.perf_counter() - start
    pending = set(range(AGENTS))
    with httpx.Client(timeout=5) as client:
        def all_served() -> bool:
            pending.difference_update({i for i in list(pending) if serves_http_app(d, "gw", _domain(i, 0), client)})
            return not pending

        wait_for(all_served, 180, "every agent's first tunnel to serve")
    serving = time.perf_counter() - start
    time.sleep(1)
    swarm_memory = memory_kb(swarm.popen.pid)
    gateway_memory = memory_kb(gateway)
    record("scale_agents", agents=AGENTS, tunnels_per_agent=TUNNELS // AGENTS, seconds_until_all_online=online,
           seconds_until_all_serving=serving, gateway_rss_mb=gateway_memory["rss"] / 1024,
           gateway_peak_rss_mb=gateway_memory["hwm"] / 1024,
           gateway_kb_per_agent=(gateway_memory["rss"] - gateway_before) / AGENTS,
           swarm_process_rss_mb=swarm_memory["rss"] / 1024, swarm_kb_per_agent=swarm_memory["rss"] / AGENTS)


def test_config_push_to_affected_clients(deployment, record):
    """Disabling and re-enabling a tunnel: control rebuilds all 101 clients' configs to find the two that
    changed (its agent and the gateway); timed until both acknowledged."""
    d = deployment
    wait_for(lambda: _quiet(d), 120, "every client to acknowledge the configs so far")
    tunnel_id = d.api.get("/api/tunnels", params={"limit": 1}).json()["items"][0]["id"]
    latencies = []
    for i in range(PUSHES):
        acks = _acks(d)
        start = time.perf_counter()
        response = d.api.patch(f"/api/tunnels/{tunnel_id}", json={"enabled": i % 2 == 1})
        assert response.status_code == 200, response.text
        wait_for(lambda: _acks(d) >= acks + 2, 60, "the agent and the gateway to acknowledge")
        latencies.append(time.perf_counter() - start)
    record("scale_tunnels", connected_clients=AGENTS + 1,
           push_to_affected_clients_seconds_median=statistics.median(latencies),
           push_to_affected_clients_seconds_max=max(latencies))


def test_new_gateway_reaches_every_agent(deployment, record):
    """A second gateway joins: every agent's config gains a peer; timed from starting the gateway process
    until all 100 agents acknowledged, then until a tunnel of every tenth agent serves through it."""
    d = deployment
    wait_for(lambda: _quiet(d), 60, "every client to acknowledge the configs so far")
    acks = _metric(d, "config_acks_total", "agent")
    start = time.perf_counter()
    d.add_gateway("gw2")
    wait_for(lambda: _metric(d, "clients_connected", "gateway") == 2, 60, "the new gateway to connect")
    connected = time.perf_counter() - start
    wait_for(lambda: _metric(d, "config_acks_total", "agent") >= acks + AGENTS, 120, "every agent's ack")
    pushed = time.perf_counter() - start
    pending = {_domain(a, TUNNELS // AGENTS - 1) for a in range(0, AGENTS, 10)}
    with httpx.Client(timeout=5) as client:
        def all_served() -> bool:
            pending.difference_update({domain for domain in list(pending) if serves_http_app(d, "gw2", domain, client)})
            return not pending

        wait_for(all_served, 60, "tunnels to serve through the new gateway")
    serving = time.perf_counter() - start
    memory = {name: memory_kb(process.popen.pid) for name, (process, _) in d.gateways.items()}
    record("scale_tunnels", new_gateway_connected_seconds=connected,
           new_gateway_pushed_to_all_agents_seconds=pushed, new_gateway_serving_seconds=serving,
           **{f"{name}_rss_mb": m["rss"] / 1024 for name, m in memory.items()},
           **{f"{name}_peak_rss_mb": m["hwm"] / 1024 for name, m in memory.items()},
           control_rss_mb=memory_kb(d.control.popen.pid)["rss"] / 1024)


def _acks(d: Deployment) -> float:
    return _metric(d, "config_acks_total", "agent") + _metric(d, "config_acks_total", "gateway")


def _quiet(d: Deployment) -> bool:
    """Every config pushed has been acknowledged, and nothing new was pushed for a moment."""
    pushed = _metric(d, "config_pushes_total", "agent") + _metric(d, "config_pushes_total", "gateway")
    if _acks(d) < pushed:
        return False
    time.sleep(0.5)
    return pushed == _metric(d, "config_pushes_total", "agent") + _metric(d, "config_pushes_total", "gateway")
