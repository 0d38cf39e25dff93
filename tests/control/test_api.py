"""The admin REST API over real HTTP: CRUD, validation, auth, allocation, concurrency."""

from __future__ import annotations

import dataclasses

import httpx
import pytest
import trio

from kakuremichi.control import cli
from tests.control.conftest import ADMIN, start_control

pytestmark = pytest.mark.both_databases


async def test_agent_crud_and_key_shown_once(control):
    created = await control.create("agents", name="laptop", metadata={"os": "linux"})
    assert created["apiKey"].startswith("agt_") and len(created["apiKey"]) >= 4 + 43
    assert created["status"] == "offline" and created["publicKey"] is None
    got = (await control.api.get(f"/api/agents/{created['id']}")).json()
    assert "apiKey" not in got and got["metadata"] == {"os": "linux"}
    patched = await control.api.patch(f"/api/agents/{created['id']}", json={"name": "desk"})
    assert patched.status_code == 200 and patched.json()["name"] == "desk"
    assert (await control.api.delete(f"/api/agents/{created['id']}")).status_code == 204
    missing = await control.api.get(f"/api/agents/{created['id']}")
    assert missing.status_code == 404 and missing.json()["code"] == "not_found"


async def test_list_is_paginated(control):
    for i in range(5):
        await control.create("gateways", name=f"gw{i}")
    page = (await control.api.get("/api/gateways", params={"limit": 2, "offset": 3})).json()
    assert page["total"] == 5 and [g["name"] for g in page["items"]] == ["gw3", "gw4"]
    bad = await control.api.get("/api/gateways", params={"limit": "0"})
    assert bad.status_code == 400 and "limit" in bad.json()["details"]


async def test_validation_errors_name_every_field(control):
    response = await control.api.post("/api/tunnels", json={"domain": "exa mple.com", "target": "nohost",
                                                            "enabled": "yes", "colour": "red"})
    assert response.status_code == 400
    error = response.json()
    assert error["code"] == "validation_failed"
    assert set(error["details"]) == {"domain", "target", "enabled", "colour", "agentId"}
    assert error["details"]["agentId"] == "required" and error["details"]["colour"] == "unknown field"
    for payload in (b"{not json", b"[1, 2]", b"", b"[" * 100_000, b'{"name": "a", "metadata": {"x": NaN}}',
                    b'{"name": "a", "metadata": {"x": "\\ud800"}}'):
        response = await control.api.post("/api/agents", content=payload)
        assert response.status_code == 400 and response.json()["code"] in ("invalid_json",)
    response = await control.api.post("/api/tunnels", json={"domain": "a.example.com", "agentId": "nope",
                                                            "target": "localhost:80"})
    assert response.status_code == 400 and response.json()["details"] == {"agentId": "no such agent"}
    response = await control.api.patch("/api/gateways/nope", json={"wireguardPort": 70000})
    assert response.status_code == 400  # validated before looking the gateway up
    assert (await control.api.put("/api/agents")).status_code == 405


async def test_admin_token_required(control):
    async with httpx.AsyncClient(base_url=control.url) as anonymous:
        missing = await anonymous.get("/api/agents")
        assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
        wrong = await anonymous.get("/api/agents", headers={"Authorization": "Bearer kma_wrong"})
        assert wrong.status_code == 403 and wrong.json()["code"] == "forbidden"
        assert (await anonymous.get("/api/openapi.json")).json()["openapi"] == "3.1.0"
        assert (await anonymous.get("/healthz")).json()["status"] == "ok"


async def test_duplicates_conflict(control):
    agent = await control.create("agents", name="a")
    assert (await control.api.post("/api/agents", json={"name": "a"})).status_code == 409
    await control.create("tunnels", domain="App.Example.com.", agentId=agent["id"], target="localhost:8080")
    again = await control.api.post("/api/tunnels", json={"domain": "app.EXAMPLE.com", "agentId": agent["id"],
                                                         "target": "http://127.0.0.1:9000"})
    assert again.status_code == 409 and again.json()["details"] == {"domain": "already in use"}


async def test_subnets_allocated_and_reused(control):
    agent = await control.create("agents", name="a")
    gw1 = await control.create("gateways", name="gw1")
    gw2 = await control.create("gateways", name="gw2")
    tunnels = [await control.create("tunnels", domain=f"t{i}.example.com", agentId=agent["id"],
                                    target="localhost:8080") for i in range(3)]
    assert [t["subnet"] for t in tunnels] == ["10.1.0.0/24", "10.2.0.0/24", "10.3.0.0/24"]
    assert tunnels[0]["agentIp"] == "10.1.0.2"
    assert tunnels[0]["gatewayIps"] == {gw1["id"]: "10.1.0.254", gw2["id"]: "10.1.0.253"}
    assert (await control.api.delete(f"/api/tunnels/{tunnels[1]['id']}")).status_code == 204
    reused = await control.create("tunnels", domain="new.example.com", agentId=agent["id"], target="x:1")
    assert reused["subnet"] == "10.2.0.0/24"
    # a new gateway gets an address in every existing tunnel; a deleted one frees its addresses
    assert (await control.api.delete(f"/api/gateways/{gw1['id']}")).status_code == 204
    gw3 = await control.create("gateways", name="gw3")
    listed = (await control.api.get("/api/tunnels")).json()["items"]
    assert all(t["gatewayIps"][gw3["id"]].endswith(".254") for t in listed)
    # deleting the agent deletes its tunnels
    assert (await control.api.delete(f"/api/agents/{agent['id']}")).status_code == 204
    assert (await control.api.get("/api/tunnels")).json()["total"] == 0


async def test_fifty_concurrent_creations_get_distinct_subnets(control):
    agent = await control.create("agents", name="a")
    await control.create("gateways", name="gw")
    results = []

    async def create(i: int) -> None:
        response = await control.api.post("/api/tunnels", json={"domain": f"c{i}.example.com",
                                                                "agentId": agent["id"], "target": "localhost:80"})
        results.append(response)

    async with trio.open_nursery() as nursery:
        for i in range(50):
            nursery.start_soon(create, i)
    assert [r.status_code for r in results] == [201] * 50
    subnets = {r.json()["subnet"] for r in results}
    assert len(subnets) == 50 and "10.50.0.0/24" in subnets and "10.51.0.0/24" not in subnets


async def test_metrics_and_healthz(control):
    metrics = (await control.api.get("/metrics")).text
    assert 'kakuremichi_control_clients_connected{role="gateway"} 0' in metrics
    assert (await control.api.get("/healthz")).json()["configVersion"] == 0
    await control.create("agents", name="a")
    assert (await control.api.get("/healthz")).json()["configVersion"] == 1
    # agents and gateways by status as the database has them: a new agent has not connected yet
    metrics = (await control.api.get("/metrics")).text
    assert 'kakuremichi_control_clients{role="agent",status="offline"} 1' in metrics
    assert 'role="gateway",status=' not in metrics




@pytest.mark.parametrize("metrics_public", [False, True])
async def test_metrics_need_a_token_unless_public(nursery, settings, metrics_public):
    settings = dataclasses.replace(settings, metrics_token="prometheus-secret", metrics_public=metrics_public)
    control = await start_control(nursery, settings)
    async with control.api, httpx.AsyncClient(base_url=control.url) as scraper:
        anonymous = await scraper.get("/metrics")
        wrong = await scraper.get("/metrics", headers={"Authorization": "Bearer kma_wrong"})
        if metrics_public:
            assert anonymous.status_code == wrong.status_code == 200
        else:
            assert anonymous.status_code == 401 and anonymous.headers["www-authenticate"] == "Bearer"
            assert wrong.status_code == 403 and wrong.json()["code"] == "forbidden"
        for token in ("prometheus-secret", ADMIN):
            scraped = await scraper.get("/metrics", headers={"Authorization": f"Bearer {token}"})
            assert scraped.status_code == 200 and "kakuremichi_control_config_version 0" in scraped.text
        refused = await scraper.get("/api/agents", headers={"Authorization": "Bearer prometheus-secret"})
        assert refused.status_code == 403  # the metrics token reads metrics only


def test_metrics_flags(tmp_path):
    args = cli.parser().parse_args(["--metrics-public"])
    assert args.metrics_public and args.metrics_token is None
    (tmp_path / "metrics-token").write_text("prometheus-secret\n")
    args = cli.parser().parse_args(["--metrics-token-file", str(tmp_path / "metrics-token")])
    assert args.metrics_token == "prometheus-secret" and not args.metrics_public


async def test_ids_and_pages_out_of_range_are_client_errors(control):
    agent = await control.create("agents", name="a")
    huge = await control.api.get("/api/gateways", params={"offset": str(2**63)})
    assert huge.status_code == 400 and set(huge.json()) == {"error", "code", "details"}
    assert "offset" in huge.json()["details"]
    for raw in ("²", "١", "-1", "1e3", "9" * 5000, ""):
        assert (await control.api.get("/api/agents", params={"limit": raw})).status_code == 400, raw
    for kind in ("agents", "gateways", "tunnels"):
        for item_id in ("%20", "%09", "%20" + agent["id"], agent["id"] + "%20", "x" * 65):
            for method, path in (("GET", ""), ("PATCH", ""), ("DELETE", ""), ("POST", "/rotate-key")):
                if kind == "tunnels" and path:
                    continue
                response = await control.api.request(method, f"/api/{kind}/{item_id}{path}", json={})
                assert response.status_code == 404, (method, kind, item_id, response.text)
                assert response.json()["code"] == "not_found"
    assert (await control.api.get(f"/api/agents/{agent['id']}")).status_code == 200  # still there
    blank = await control.api.post("/api/tunnels", json={"domain": "a.example.com", "agentId": " ",
                                                         "target": "localhost:80"})
    assert blank.status_code == 400 and "agentId" in blank.json()["details"]
    wrong_method = await control.api.put("/api/agents")
    assert wrong_method.status_code == 405 and set(wrong_method.headers["allow"].split(", ")) >= {"GET", "POST"}
