"""Tunnel access policies on control: written through the API (secrets write-only, kept as hashes), pushed to the
gateways, share links created, listed and revoked, sessions revoked."""

from __future__ import annotations

import base64

import pytest

from kakuremichi.access import tokens
from kakuremichi.access.passwords import verify_password
from tests.control.conftest import connect, public_key

pytestmark = pytest.mark.both_databases


async def test_access_policy_is_write_only_for_secrets_and_pushed_to_gateways(control):
    agent = await control.create("agents", name="laptop")
    gw = await control.create("gateways", name="gw1")
    async with connect(control, gw["apiKey"], "gateway", public_key(), "203.0.113.1:51820") as gateway:
        tunnel = await control.create("tunnels", domain="app.example.com", agentId=agent["id"], target="localhost:80",
                                      access={"mode": "password", "password": "correct horse",
                                              "rules": [{"action": "deny", "cidr": "10.0.0.1/8"}],
                                              "bypassPaths": ["/caldav/"], "bypassSecret": "s" * 20})
        access = tunnel["access"]
        assert access["passwordSet"] and access["bypassSecretSet"] and "password" not in access
        assert access["rules"] == [{"action": "deny", "cidr": "10.0.0.0/8"}]  # canonical
        config = await gateway.config()
        pushed = config.routes[0].access
        assert pushed.mode == "password" and verify_password("correct horse", pushed.password_hash)
        assert [(r.action, r.cidr) for r in pushed.rules] == [("deny", "10.0.0.0/8")]
        assert len(base64.urlsafe_b64decode(config.access_key)) == 32

        # a change without the password keeps it; public without rules pushes no policy at all
        changed = await control.api.patch(f"/api/tunnels/{tunnel['id']}", json={"access": {
            "mode": "password", "sessionHours": 2}})
        assert changed.status_code == 200 and changed.json()["access"]["passwordSet"]
        pushed = (await gateway.config()).routes[0].access
        assert pushed.session_lifetime == 7200 and verify_password("correct horse", pushed.password_hash)
        await control.api.patch(f"/api/tunnels/{tunnel['id']}", json={"access": {"mode": "public"}})
        assert not (await gateway.config()).routes[0].access  # left out


async def test_access_validation_names_the_fields(control):
    agent = await control.create("agents", name="laptop")
    base = {"domain": "app.example.com", "agentId": agent["id"], "target": "localhost:80"}
    missing = await control.api.post("/api/tunnels", json={**base, "access": {"mode": "password"}})
    assert missing.status_code == 400 and "access.password" in missing.json()["details"]
    bad = await control.api.post("/api/tunnels", json={**base, "access": {"rules": [{"action": "deny", "cidr": "x"}]}})
    assert bad.status_code == 400 and "access.rules[0].cidr" in bad.json()["details"]
    wrong = await control.api.post("/api/tunnels", json={**base, "access": {"mode": "secret"}})
    assert wrong.status_code == 400 and "access" in wrong.json()["details"]


async def test_share_links_created_listed_revoked_and_sessions_revoked(control):
    agent = await control.create("agents", name="laptop")
    gw = await control.create("gateways", name="gw1")
    async with connect(control, gw["apiKey"], "gateway", public_key(), "203.0.113.1:51820") as gateway:
        tunnel = await control.create("tunnels", domain="app.example.com", agentId=agent["id"], target="localhost:80",
                                      tlsMode="off", access={"mode": "password", "password": "correct horse"})
        config = await gateway.config()
        key = base64.urlsafe_b64decode(config.access_key)
        created = await control.api.post(f"/api/tunnels/{tunnel['id']}/share-links",
                                         json={"expiresInHours": 2, "note": "for Bob"})
        assert created.status_code == 201, created.text
        link = created.json()
        prefix = "http://app.example.com/.kakuremichi/share/"
        assert link["url"].startswith(prefix) and not link["revoked"]
        claims = tokens.verify(key, "share", link["url"][len(prefix):], 0)
        assert claims.tunnel == tunnel["id"] and claims.id == link["id"]
        listed = (await control.api.get(f"/api/tunnels/{tunnel['id']}/share-links")).json()["items"]
        assert [item["id"] for item in listed] == [link["id"]] and "url" not in listed[0]
        assert (await control.api.delete(f"/api/tunnels/{tunnel['id']}/share-links/{link['id']}")).status_code == 204
        assert (await gateway.config()).routes[0].access.revoked_links == [link["id"]]
        assert (await control.api.delete(f"/api/tunnels/{tunnel['id']}/share-links/nope")).status_code == 404
        revoked = await control.api.post(f"/api/tunnels/{tunnel['id']}/revoke-sessions")
        assert revoked.status_code == 200
        pushed = (await gateway.config()).routes[0].access
        assert pushed.epoch == 1 and pushed.revoked_before > 0
        one = await control.api.post(f"/api/tunnels/{tunnel['id']}/revoke-sessions", json={"email": "Ann@Example.com"})
        assert one.status_code == 200
        pushed = (await gateway.config()).routes[0].access
        assert pushed.epoch == 1 and set(pushed.revoked_users) == {"ann@example.com"}
        assert (await control.api.post(f"/api/tunnels/{tunnel['id']}/revoke-sessions", json={"email": 5})).status_code == 400
