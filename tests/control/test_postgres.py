"""Several control instances sharing one PostgreSQL database: what one writes, the others' clients get."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from contextlib import AsyncExitStack, asynccontextmanager
from types import SimpleNamespace

import httpx
import pytest
import trio
from pony.orm import db_session

from kakuremichi import protocol
from kakuremichi.control.models import open_database
from kakuremichi.control.websocket import ClientSession
from tests.control.conftest import ADMIN, Control, connect, free_port, new_postgres_database, start_control

psycopg2 = pytest.importorskip("psycopg2", reason="PostgreSQL tests need psycopg2: pip install -e '.[test]'")
DOMAIN = "app.example.com"
POLL = 0.2  # change_poll_interval of every instance here


@pytest.fixture
def database_url(postgres_server) -> str:
    return new_postgres_database(postgres_server)


@pytest.fixture
async def instances(nursery, settings, tmp_path):
    """Two controls in this process on the same database, each with its own data dir."""
    controls = [await start_control(nursery, dataclasses.replace(settings, data_dir=str(tmp_path / name),
                                                                 change_poll_interval=POLL))
                for name in ("a", "b")]
    yield controls
    for control in controls:
        await control.api.aclose()


async def status_of(ctl, kind: str, item_id: str) -> str:
    return (await ctl.api.get(f"/api/{kind}/{item_id}")).json()["status"]


async def test_a_client_of_one_instance_gets_changes_made_through_the_other(instances):
    a, b = instances
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


async def test_a_challenge_is_ready_once_a_gateway_on_the_other_instance_answers_it(instances):
    a, b = instances
    agent = await a.create("agents", name="home")
    keys = [(await a.create("gateways", name=name))["apiKey"] for name in ("gw1", "gw2")]
    await a.create("tunnels", domain=DOMAIN, agentId=agent["id"], target="localhost:8080", tlsMode="acme")
    async with connect(a, keys[0], "gateway") as gw1, connect(b, keys[1], "gateway") as gw2:
        challenge = protocol.AcmeChallenge(DOMAIN, "tok_1", "tok_1.thumbprint")
        await gw1.send(protocol.ChallengePublished(challenge))
        assert await gw2.receive(timeout=5 * POLL) == protocol.Challenges([challenge])
        with pytest.raises(trio.TooSlowError):
            await gw1.receive(timeout=3 * POLL)  # the CA must not validate through gw2 yet
        await gw2.send(protocol.ChallengesAck(["tok_1"]))
        assert await gw1.receive(timeout=5 * POLL) == protocol.ChallengeReady("tok_1")


@asynccontextmanager
async def control_processes(database_url: str, tmp_path, admin_token: str | None = ADMIN, count: int = 2,
                            *extra: str):
    """`count` controls as separate processes on one database, started at once: real concurrency, from the
    schema creation on. Each one's stdout goes to tmp_path/PORT.out."""
    ports = [free_port() for _ in range(count)]
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    token = ["--admin-token", admin_token] if admin_token else []
    processes = []
    try:
        for port in ports:
            with open(tmp_path / f"{port}.out", "w") as out, open(tmp_path / f"{port}.err", "w") as err:
                processes.append(subprocess.Popen(
                    [sys.executable, "-m", "kakuremichi.control", "--listen", f"127.0.0.1:{port}", "--data-dir",
                     str(tmp_path / str(port)), "--database-url", database_url, *token, *extra], env=env, stdout=out,
                    stderr=err))
        async with AsyncExitStack() as stack:
            controls = []
            for port, process in zip(ports, processes):
                url = f"http://127.0.0.1:{port}"
                api = await stack.enter_async_context(httpx.AsyncClient(
                    base_url=url, headers={"Authorization": f"Bearer {admin_token}"}, timeout=30))
                with trio.fail_after(20):
                    while not await _healthy(api):
                        assert process.poll() is None, (tmp_path / f"{port}.err").read_text()
                        await trio.sleep(0.05)
                controls.append(Control(url, api, None, process))
            yield controls
    finally:
        for process in processes:
            process.terminate()
            process.wait(timeout=10)


async def _healthy(api: httpx.AsyncClient) -> bool:
    try:
        return (await api.get("/healthz")).status_code == 200
    except httpx.TransportError:
        return False


async def test_clients_of_a_crashed_instance_go_offline_on_the_others(database_url, tmp_path):
    async with control_processes(database_url, tmp_path, ADMIN, 2, "--heartbeat-interval", "0.5") as (a, b):
        agent = await b.create("agents", name="laptop")
        async with connect(a, agent["apiKey"], "agent"):
            assert await status_of(b, "agents", agent["id"]) == "online"
            a.process.kill()  # no goodbye: the database still says online
        with trio.fail_after(5):
            while await status_of(b, "agents", agent["id"]) != "offline":
                await trio.sleep(0.1)


async def test_processes_started_at_once_generate_one_admin_token(database_url, tmp_path):
    async with control_processes(database_url, tmp_path, admin_token=None) as controls:
        banners = [line for out in tmp_path.glob("*.out") for line in out.read_text().splitlines() if "kma_" in line]
        assert len(banners) == 1, banners
        token = next(word for word in banners[0].split() if word.startswith("kma_"))
        for control in controls:
            control.api.headers["Authorization"] = f"Bearer {token}"
            assert (await control.api.get("/api/agents")).status_code == 200


async def test_processes_started_at_once_never_share_a_subnet(database_url, tmp_path):
    async with control_processes(database_url, tmp_path) as controls:
        agent = await controls[0].create("agents", name="a")
        await controls[1].create("gateways", name="gw")
        responses = []

        async def create(i: int) -> None:
            responses.append(await controls[i % 2].api.post("/api/tunnels", json={
                "domain": f"t{i}.example.com", "agentId": agent["id"], "target": "localhost:80"}))

        async with trio.open_nursery() as nursery:
            for i in range(40):
                nursery.start_soon(create, i)
    assert [r.status_code for r in responses] == [201] * 40, [r.text for r in responses if r.status_code != 201]
    assert len({r.json()["subnet"] for r in responses}) == 40
    assert len({ip for r in responses for ip in r.json()["gatewayIps"].values()}) == 40


async def test_only_one_gateway_gets_the_acme_lease_across_instances(database_url, tmp_path):
    async with control_processes(database_url, tmp_path) as (a, b):
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


def test_stats_stored_while_another_instance_changes_the_metadata(database_url):
    """Stats merge into the metadata: a concurrent commit of it elsewhere replays the merge, the session lives on."""
    state = SimpleNamespace(db=open_database(database_url), status_changed=lambda: None)
    with db_session:
        agent_id = state.db.Agent(name="a", api_key_hash="h", metadata={"os": "linux"}).id
    session = ClientSession(state, "agent", agent_id, "a")
    row, attempts = session.row, []

    def row_then_a_concurrent_commit():
        loaded = row()
        loaded.metadata  # read before the other instance commits
        attempts.append(loaded)
        if len(attempts) == 1:
            other = psycopg2.connect(database_url)
            with other, other.cursor() as cursor:
                cursor.execute("UPDATE agents SET metadata = %s", ('{"os": "bsd"}',))
            other.close()
        return loaded

    session.row = row_then_a_concurrent_commit
    session._store_stats({"rx": 1})
    with db_session:
        assert state.db.Agent[agent_id].metadata == {"os": "bsd", "stats": {"rx": 1}} and len(attempts) == 2
    state.db.disconnect()
