"""Login grants on control (issue 16): a tcp tunnel's loginTunnelId checked, a gateway's access_granted stored and
pushed to every gateway with the port route, shown on the tunnel, dropped by revoke-sessions and at expiry."""

from __future__ import annotations

import datetime

import pytest
from pony.orm import db_session

from kakuremichi import protocol
from kakuremichi.control import grants, models
from tests.control.conftest import connect, public_key

pytestmark = pytest.mark.both_databases


async def _web_and_ssh(control, agent_id: str, **access) -> tuple[dict, dict]:
    web = await control.create("tunnels", domain="web.example.com", agentId=agent_id, target="localhost:80",
                               access={"mode": "password", "password": "correct horse"})
    ssh = await control.create("tunnels", protocol="tcp", agentId=agent_id, target="localhost:22",
                               access={"loginTunnelId": web["id"], **access})
    return web, ssh


async def test_the_login_tunnel_must_be_an_http_tunnel_with_a_login(control):
    agent = await control.create("agents", name="laptop")
    public = await control.create("tunnels", domain="open.example.com", agentId=agent["id"], target="localhost:80")
    tcp = {"protocol": "tcp", "agentId": agent["id"], "target": "localhost:22"}
    refused = await control.api.post("/api/tunnels", json={**tcp, "access": {"loginTunnelId": public["id"]}})
    assert refused.status_code == 400 and "mode password or sso" in refused.json()["details"]["access.loginTunnelId"]
    unknown = await control.api.post("/api/tunnels", json={**tcp, "access": {"loginTunnelId": "nope"}})
    assert unknown.status_code == 400 and "access.loginTunnelId" in unknown.json()["details"]
    too_long = await control.api.post("/api/tunnels", json={**tcp, "access": {"loginGrantMinutes": 10081}})
    assert too_long.status_code == 400
    web, ssh = await _web_and_ssh(control, agent["id"], loginGrantMinutes=5)
    assert ssh["access"]["loginTunnelId"] == web["id"] and ssh["access"]["loginGrantMinutes"] == 5
    on_http = await control.api.patch(f"/api/tunnels/{public['id']}", json={"access": {"loginTunnelId": web["id"]}})
    assert on_http.status_code == 400 and "only for a tcp or udp" in on_http.json()["details"]["access.loginTunnelId"]


async def test_a_login_reported_by_one_gateway_reaches_every_gateway_until_revoked(control):
    agent = await control.create("agents", name="laptop")
    gw1, gw2 = await control.create("gateways", name="gw1"), await control.create("gateways", name="gw2")
    async with connect(control, gw1["apiKey"], "gateway", public_key(), "203.0.113.1:51820") as one, \
            connect(control, gw2["apiKey"], "gateway", public_key(), "203.0.113.2:51820") as two:
        web, ssh = await _web_and_ssh(control, agent["id"])
        for gateway in (one, two):
            while not (await gateway.config()).ports:
                pass
        await one.send(protocol.AccessGranted(web["id"], "198.51.100.7"))
        before = datetime.datetime.now(datetime.timezone.utc).timestamp()
        for gateway in (one, two):
            port = (await gateway.config()).ports[0]
            assert port.login_tunnel_id == web["id"] and list(port.granted) == ["198.51.100.7"]
            assert before + 59 * 60 < port.granted["198.51.100.7"] <= before + 61 * 60
        shown = (await control.api.get(f"/api/tunnels/{ssh['id']}")).json()["access"]["grants"]
        assert [grant["address"] for grant in shown] == ["198.51.100.7"]

        revoked = await control.api.post(f"/api/tunnels/{web['id']}/revoke-sessions", json={})
        assert revoked.status_code == 200
        for gateway in (one, two):
            assert (await gateway.config()).ports[0].granted == {}
        assert (await control.api.get(f"/api/tunnels/{ssh['id']}")).json()["access"]["grants"] == []


def test_grants_expire_and_are_purged_at_the_next_grant(tmp_path):
    db = models.open_database(f"sqlite:///{tmp_path}/control.db")
    t0 = datetime.datetime(2026, 1, 1)
    with db_session:
        agent = db.Agent(name="a", api_key_hash="h")
        web = db.Tunnel(domain="web.example.com", agent=agent, target="localhost:80", subnet="10.9.0.0/30",
                        agent_ip="10.9.0.2")
        ssh = db.Tunnel(domain="x.port.invalid", agent=agent, target="localhost:22", subnet="10.9.0.4/30",
                        agent_ip="10.9.0.6")
        db.TunnelPort(tunnel=ssh, protocol="tcp", public_port=2222)
        db.TunnelAccess(tunnel=web, settings={"mode": "password"}, password_hash="x")
        db.TunnelAccess(tunnel=ssh, settings={"login_tunnel_id": web.id, "login_grant_minutes": 1})
        assert grants.record(db, web.id, "192.0.2.1", t0) == 1
        assert grants.record(db, "another", "192.0.2.9", t0) == 0  # a tunnel nobody names opens nothing
        assert list(grants.pushed(ssh, t0 + datetime.timedelta(seconds=59))) == ["192.0.2.1"]
        assert grants.pushed(ssh, t0 + datetime.timedelta(minutes=1)) == {}
        grants.record(db, web.id, "192.0.2.2", t0 + datetime.timedelta(minutes=2))
        assert sorted(g.address for g in db.AccessGrant.select()) == ["192.0.2.2"]  # the expired row is gone
