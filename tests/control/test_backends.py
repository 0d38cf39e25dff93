"""Several backends per tunnel in control: addresses, the API, configs for gateways and agents, health reports."""

from __future__ import annotations

import pytest
import trio
from pony.orm import db_session

from kakuremichi import protocol
from kakuremichi.control import models
from tests.control.conftest import body, connect, public_key

pytestmark = pytest.mark.both_databases


async def _two_agents(control):
    return await control.create("agents", name="one"), await control.create("agents", name="two")


async def test_backends_get_their_own_addresses_and_each_agent_only_its_own(control):
    one, two = await _two_agents(control)
    gw = await control.create("gateways", name="gw1")
    async with connect(control, gw["apiKey"], "gateway", public_key(), "203.0.113.1:51820") as gateway, \
            connect(control, one["apiKey"], "agent", public_key()) as agent_one, \
            connect(control, two["apiKey"], "agent", public_key()) as agent_two:
        tunnel = await control.create("tunnels", domain="app.example.com", tlsMode="off", affinity=True,
                                      healthCheck={"type": "http", "path": "/health", "intervalSeconds": 1},
                                      backends=[{"agentId": one["id"], "target": "localhost:8080", "weight": 3},
                                                {"agentId": two["id"], "target": "localhost:9090", "priority": 1},
                                                {"agentId": one["id"], "target": "localhost:7070",
                                                 "healthCheck": {"type": "tcp"}}])
        assert [b["address"] for b in tunnel["backends"]] == ["10.1.0.2", "10.1.0.3", "10.1.0.4"]
        assert tunnel["agentId"] == one["id"] and tunnel["target"] == "localhost:8080"
        assert tunnel["agentIp"] == "10.1.0.2" and tunnel["gatewayIps"] == {gw["id"]: "10.1.0.254"}
        assert tunnel["backends"][0]["health"] == {"status": "unknown", "lastCheck": None, "error": None}
        route = (await gateway.config()).routes[0]
        assert route.affinity is True
        assert [(b.address, b.weight, b.priority) for b in route.backends] == [
            ("10.1.0.2", 3, 0), ("10.1.0.3", 1, 1), ("10.1.0.4", 1, 0)]
        mine = (await agent_one.config()).tunnels
        assert [(m.agent_ip, m.target, m.health_check.type) for m in mine] == [
            ("10.1.0.2", "localhost:8080", "http"), ("10.1.0.4", "localhost:7070", "tcp")]
        assert mine[0].health_check.path == "/health" and mine[0].http_proxy is False
        theirs = (await agent_two.config())
        assert [m.agent_ip for m in theirs.tunnels] == ["10.1.0.3"] and theirs.addresses == ["10.1.0.3"]

        # the agent reports a transition: stored, shown, and pushed to the gateway at once
        second = tunnel["backends"][1]["id"]
        await agent_two.send(protocol.BackendHealth(second, "unhealthy", "HTTP status 500"))
        route = (await gateway.config()).routes[0]
        assert [b.health for b in route.backends] == ["unknown", "unhealthy", "unknown"]
        metrics = (await control.api.get("/metrics")).text
        assert (f'kakuremichi_control_backend_health_transitions_total{{backend="{second}",status="unhealthy"}} 1'
                in metrics)
        shown = body(await control.api.get(f"/api/tunnels/{tunnel['id']}"))["backends"][1]["health"]
        assert shown["status"] == "unhealthy" and shown["error"] == "HTTP status 500" and shown["lastCheck"]
        await agent_one.send(protocol.BackendHealth(second, "healthy"))  # not its backend: ignored
        await agent_two.send(protocol.BackendHealth(second, "unhealthy", "HTTP status 503"))  # no change
        for _ in range(100):  # the report is stored without a push: poll for it
            health = body(await control.api.get(f"/api/tunnels/{tunnel['id']}"))["backends"][1]["health"]
            if health["error"] == "HTTP status 503":
                break
            await trio.sleep(0.02)
        assert health == {**shown, "error": "HTTP status 503", "lastCheck": health["lastCheck"]}

        # draining one, dropping another: ids keep addresses and health, the gone one's address is freed
        changed = body(await control.api.patch(f"/api/tunnels/{tunnel['id']}", json={"backends": [
            {"id": tunnel["backends"][0]["id"], "agentId": one["id"], "target": "localhost:8080", "weight": 3},
            {"id": second, "agentId": two["id"], "target": "localhost:9090", "draining": True}]}))
        assert [(b["address"], b["draining"]) for b in changed["backends"]] == [("10.1.0.2", False),
                                                                               ("10.1.0.3", True)]
        assert changed["backends"][1]["health"]["status"] == "unhealthy"
        route = (await gateway.config()).routes[0]
        assert [(b.address, b.draining) for b in route.backends] == [("10.1.0.2", False), ("10.1.0.3", True)]
        assert [m.agent_ip for m in (await agent_one.config()).tunnels] == ["10.1.0.2"]
        unchecked = body(await control.api.patch(f"/api/tunnels/{tunnel['id']}", json={"healthCheck": {}}))
        assert [b["health"]["status"] for b in unchecked["backends"]] == ["unknown", "unknown"]  # nobody checks
        assert [b.health for b in (await gateway.config()).routes[0].backends] == ["unknown", "unknown"]
        renewed = body(await control.api.patch(f"/api/tunnels/{tunnel['id']}", json={"backends": [
            {"agentId": two["id"], "target": "localhost:6060"}, {"agentId": one["id"], "target": "localhost:8080"}]}))
        assert [(b["address"], b["health"]["status"]) for b in renewed["backends"]] == [("10.1.0.2", "unknown"),
                                                                                      ("10.1.0.3", "unknown")]
        assert renewed["agentId"] == two["id"] and renewed["backends"][0]["id"] not in (second,)


async def test_the_shorthand_is_the_first_backend_and_refused_beside_backends(control):
    one, two = await _two_agents(control)
    tunnel = await control.create("tunnels", domain="app.example.com", agentId=one["id"], target="localhost:1")
    assert [(b["agentId"], b["target"], b["address"]) for b in tunnel["backends"]] == [
        (one["id"], "localhost:1", "10.1.0.2")]
    moved = body(await control.api.patch(f"/api/tunnels/{tunnel['id']}", json={"agentId": two["id"]}))
    assert moved["backends"][0]["agentId"] == two["id"] and moved["agentId"] == two["id"]
    both = await control.api.post("/api/tunnels", json={"domain": "b.example.com", "agentId": one["id"],
                                                        "target": "localhost:1",
                                                        "backends": [{"agentId": one["id"], "target": "x:1"}]})
    assert both.status_code == 400 and "backends" in both.json()["details"]
    half = await control.api.post("/api/tunnels", json={"domain": "c.example.com", "agentId": one["id"]})
    assert half.status_code == 400 and half.json()["details"] == {"target": "required"}
    twice = await control.api.patch(f"/api/tunnels/{tunnel['id']}", json={"backends": [
        {"id": moved["backends"][0]["id"], "agentId": one["id"], "target": "x:1"},
        {"id": moved["backends"][0]["id"], "agentId": two["id"], "target": "x:2"}]})
    assert twice.status_code == 400 and "once" in twice.json()["details"]["backends"]
    foreign = await control.api.patch(f"/api/tunnels/{tunnel['id']}", json={"backends": [
        {"id": "b" * 32, "agentId": one["id"], "target": "x:1"}]})
    assert foreign.status_code == 400 and "no backend" in foreign.json()["details"]["backends"]
    nobody = await control.api.post("/api/tunnels", json={"domain": "d.example.com",
                                                          "backends": [{"agentId": "nope", "target": "x:1"}]})
    assert nobody.status_code == 400 and "no such agent" in nobody.json()["details"]["backends"]


async def test_a_one_backend_tunnel_keeps_the_version_1_route(control):
    agent = await control.create("agents", name="one")
    gw = await control.create("gateways", name="gw1")
    async with connect(control, gw["apiKey"], "gateway", public_key(), "203.0.113.1:51820") as gateway:
        await control.create("tunnels", domain="app.example.com", agentId=agent["id"], target="localhost:1")
        route = (await gateway.config()).routes[0]
        assert "backends" not in route.to_json() and route.agent_ip == "10.1.0.2"


async def test_tunnels_stored_before_backends_get_their_one_backend(control):
    agent = await control.create("agents", name="one")
    tunnel = await control.create("tunnels", domain="app.example.com", agentId=agent["id"], target="localhost:1")
    db = models.open_database(control.settings.database)  # as a second control would
    with db_session:
        for row in db.Backend.select():
            row.delete()
    db.disconnect()
    db = models.open_database(control.settings.database)  # its start gives the tunnel its backend again
    db.disconnect()
    shown = body(await control.api.get(f"/api/tunnels/{tunnel['id']}"))["backends"]
    assert [(b["agentId"], b["target"], b["address"]) for b in shown] == [(agent["id"], "localhost:1", "10.1.0.2")]


async def test_deleting_an_agent_leaves_the_tunnels_other_agents_serve_too(control):
    one, two = await _two_agents(control)
    shared = await control.create("tunnels", domain="shared.example.com", backends=[
        {"agentId": one["id"], "target": "localhost:1"}, {"agentId": two["id"], "target": "localhost:2"}])
    alone = await control.create("tunnels", domain="alone.example.com", agentId=one["id"], target="localhost:3")
    assert (await control.api.delete(f"/api/agents/{one['id']}")).status_code == 204
    kept = body(await control.api.get(f"/api/tunnels/{shared['id']}"))
    assert (kept["agentId"], kept["target"], kept["agentIp"]) == (two["id"], "localhost:2", "10.1.0.3")
    assert [b["agentId"] for b in kept["backends"]] == [two["id"]]
    assert (await control.api.get(f"/api/tunnels/{alone['id']}")).status_code == 404


async def test_a_tcp_tunnel_pushes_its_backends_on_its_port_route(control):
    one, two = await _two_agents(control)
    gw = await control.create("gateways", name="gw1")
    async with connect(control, gw["apiKey"], "gateway", public_key(), "203.0.113.1:51820") as gateway, \
            connect(control, two["apiKey"], "agent", public_key()) as agent_two:
        tunnel = await control.create("tunnels", protocol="tcp", affinity=True, healthCheck={"type": "tcp"},
                                      backends=[{"agentId": one["id"], "target": "localhost:22", "weight": 3},
                                                {"agentId": two["id"], "target": "localhost:2222",
                                                 "draining": True}])
        route = (await gateway.config()).ports[0]
        assert route.affinity is True and route.agent_ip == "10.1.0.2"
        assert [(b.id, b.address, b.weight, b.draining) for b in route.backends] == [
            (tunnel["backends"][0]["id"], "10.1.0.2", 3, False), (tunnel["backends"][1]["id"], "10.1.0.3", 1, True)]
        mapping = (await agent_two.config()).tunnels[0]
        assert (mapping.agent_ip, mapping.protocol, mapping.target, mapping.health_check.type) == (
            "10.1.0.3", "tcp", "localhost:2222", "tcp")
        await control.api.patch(f"/api/tunnels/{tunnel['id']}", json={
            "backends": [{"agentId": one["id"], "target": "localhost:22"}], "healthCheck": {"type": "none"},
            "affinity": False})
        assert "backends" not in (await gateway.config()).ports[0].to_json()  # one plain backend: as version 1
