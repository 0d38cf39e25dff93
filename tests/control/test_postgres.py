"""Several control instances sharing one PostgreSQL database: what one writes, the others' clients get."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import httpx
import pytest
import trio

from kakuremichi import protocol
from tests.control.conftest import ADMIN, connect, free_port, new_postgres_database, start_control

DOMAIN = "app.example.com"
POLL = 0.2  # change_poll_interval of every instance here


@pytest.fixture
def database_url(postgres_server) -> str:
    return new_postgres_database(postgres_server)


async def two_instances(nursery, settings, tmp_path):
    """Two controls in this process on the same database, each with its own data dir."""
    return [await start_control(nursery, dataclasses.replace(settings, data_dir=str(tmp_path / name),
                                                             change_poll_interval=POLL))
            for name in ("a", "b")]


async def status_of(ctl, kind: str, item_id: str) -> str:
    return (await ctl.api.get(f"/api/{kind}/{item_id}")).json()["status"]


async def test_a_client_of_one_instance_gets_changes_made_through_the_other(nursery, settings, tmp_path):
    a, b = await two_instances(nursery, settings, tmp_path)
    agent = await a.create("agents", name="laptop")
    async with connect(b, agent["apiKey"], "agent") as client:
        assert client.first_config.tunnels == []
        assert await status_of(a, "agents", agent["id"]) == "online"  # written by b
        tunnel = await a.create("tunnels", domain=DOMAIN, agentId=agent["id"], target="localhost:8080")
        config = await client.config(timeout=5 * POLL)  # b noticed a's commit on its own
        assert [(t.domain, t.agent_ip) for t in config.tunnels] == [(DOMAIN, tunnel["agentIp"])]
        await b.api.patch(f"/api/tunnels/{tunnel['id']}", json={"target": "localhost:9"})
        assert (await client.config(timeout=5 * POLL)).tunnels[0].target == "localhost:9"
    with trio.fail_after(5):
        while await status_of(a, "agents", agent["id"]) != "offline":
            await trio.sleep(0.05)


async def test_only_one_gateway_gets_the_acme_lease_across_instances(nursery, settings, tmp_path):
    a, b = await two_instances(nursery, settings, tmp_path)
    agent = await a.create("agents", name="home")
    keys = [(await a.create("gateways", name=name))["apiKey"] for name in ("gw1", "gw2")]
    await b.create("tunnels", domain=DOMAIN, agentId=agent["id"], target="localhost:8080", tlsMode="acme")
    async with connect(a, keys[0], "gateway") as gw1, connect(b, keys[1], "gateway") as gw2:
        leases = {}

        async def request(name, gateway):
            await gateway.send(protocol.LeaseRequest(DOMAIN))
            while not isinstance(message := await gateway.receive(timeout=5), protocol.Lease):
                pass  # the other gateway's connection changed this one's config
            leases[name] = message

        async with trio.open_nursery() as both:
            both.start_soon(request, "gw1", gw1)
            both.start_soon(request, "gw2", gw2)
        assert sorted(lease.granted for lease in leases.values()) == [False, True]
        winner = next(name for name, lease in leases.items() if lease.granted)
        assert {lease.holder for lease in leases.values()} == {winner}


def _control_process(database_url: str, data_dir: str, port: int) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    return subprocess.Popen([sys.executable, "-m", "kakuremichi.control", "--listen", f"127.0.0.1:{port}",
                             "--data-dir", data_dir, "--database-url", database_url, "--admin-token", ADMIN],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


async def _wait_healthy(api: httpx.AsyncClient, process: subprocess.Popen) -> None:
    with trio.fail_after(20):
        while True:
            assert process.poll() is None, process.stderr.read()
            try:
                if (await api.get("/healthz")).status_code == 200:
                    return
            except httpx.TransportError:
                await trio.sleep(0.1)


async def test_two_processes_started_at_once_never_share_a_subnet(database_url, tmp_path):
    """Real concurrency: separate processes race for the schema at start-up and for subnets afterwards."""
    ports = [free_port(), free_port()]
    processes = [_control_process(database_url, str(tmp_path / str(port)), port) for port in ports]
    try:
        apis = [httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {ADMIN}"},
                                  timeout=30) for port in ports]
        for api, process in zip(apis, processes):
            await _wait_healthy(api, process)
        agent = (await apis[0].post("/api/agents", json={"name": "a"})).json()
        await apis[1].post("/api/gateways", json={"name": "gw"})
        responses = []

        async def create(i: int) -> None:
            responses.append(await apis[i % 2].post("/api/tunnels", json={
                "domain": f"t{i}.example.com", "agentId": agent["id"], "target": "localhost:80"}))

        async with trio.open_nursery() as nursery:
            for i in range(30):
                nursery.start_soon(create, i)
        assert [r.status_code for r in responses] == [201] * 30, [r.text for r in responses if r.status_code != 201]
        assert len({r.json()["subnet"] for r in responses}) == 30
        assert len({ip for r in responses for ip in r.json()["gatewayIps"].values()}) == 30
        for api in apis:
            await api.aclose()
    finally:
        for process in processes:
            process.terminate()
            process.communicate(timeout=10)
