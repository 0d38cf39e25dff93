"""tcp and udp tunnels in control's API: public ports allocated or requested, conflicts, bad input, and the
PortRoute and mapping pushed to gateways and agents (issue 15)."""

from __future__ import annotations

import dataclasses

import msgspec
import pytest

from kakuremichi import protocol
from kakuremichi.control import cli
from tests.control.conftest import connect, public_key, start_control

pytestmark = pytest.mark.both_databases


@pytest.fixture
async def ranged(nursery, settings):
    return await start_control(nursery, dataclasses.replace(settings, public_ports="2222,20000-20002"))


async def test_ports_are_allocated_lowest_first_and_requested_ones_checked(ranged):
    agent = await ranged.create("agents", name="a")
    first = await ranged.create("tunnels", protocol="tcp", agentId=agent["id"], target="localhost:22", name="ssh")
    assert (first["protocol"], first["publicPort"], first["domain"], first["name"]) == ("tcp", 2222, None, "ssh")
    assert first["proxyProtocol"] is None and first["bindErrors"] == {} and first["udpIdleTimeout"] is None
    same_udp = await ranged.create("tunnels", protocol="udp", agentId=agent["id"], target="localhost:53")
    assert same_udp["publicPort"] == 2222 and same_udp["udpIdleTimeout"] == 60.0  # tcp and udp ports differ
    asked = await ranged.create("tunnels", protocol="tcp", agentId=agent["id"], target="localhost:23",
                                publicPort=20001, proxyProtocol="v2", domain="db.example.com")
    assert asked["publicPort"] == 20001 and asked["domain"] == "db.example.com"
    assert (await ranged.create("tunnels", protocol="tcp", agentId=agent["id"], target="h:1"))["publicPort"] == 20000

    taken = await ranged.api.post("/api/tunnels", json={"protocol": "tcp", "agentId": agent["id"],
                                                       "target": "localhost:1", "publicPort": 20001})
    assert taken.status_code == 409 and "already used" in taken.json()["details"]["publicPort"]
    outside = await ranged.api.post("/api/tunnels", json={"protocol": "tcp", "agentId": agent["id"],
                                                         "target": "localhost:1", "publicPort": 8080})
    assert outside.status_code == 400 and "outside the public ports (2222,20000-20002" in \
        outside.json()["details"]["publicPort"]
    await ranged.create("tunnels", protocol="tcp", agentId=agent["id"], target="h:2")
    full = await ranged.api.post("/api/tunnels", json={"protocol": "tcp", "agentId": agent["id"], "target": "h:3"})
    assert full.status_code == 409 and full.json()["code"] == "pool_exhausted"

    # deleted: its port is free again
    assert (await ranged.api.delete(f"/api/tunnels/{first['id']}")).status_code == 204
    assert (await ranged.create("tunnels", protocol="tcp", agentId=agent["id"], target="h:4"))["publicPort"] == 2222


async def test_bad_input_gets_clear_errors(control):
    agent = await control.create("agents", name="a")
    cases = [
        ({"protocol": "sctp"}, "protocol", "must be one of http, tcp, udp"),
        ({"protocol": "tcp", "publicPort": 0}, "publicPort", "must be a port number 1-65535"),
        ({"protocol": "tcp", "proxyProtocol": "v3"}, "proxyProtocol", "must be one of v1, v2"),
        ({"protocol": "udp", "proxyProtocol": "v1"}, "proxyProtocol", "use v2 for a udp tunnel"),
        ({"protocol": "udp", "target": "https://localhost:53"}, "target", "must be host:port for a udp tunnel"),
        ({"protocol": "tcp", "target": "no-port"}, "target", "has no port"),
        ({"protocol": "udp", "udpIdleTimeout": 0}, "udpIdleTimeout", "above 0"),
        ({}, "domain", "required for an http tunnel"),
        ({"domain": "a.example.com", "publicPort": 20000}, "publicPort", "only for a tcp or udp tunnel"),
        ({"domain": "a.example.com", "target": "https://localhost:8443", "proxyProtocol": "v1"}, "proxyProtocol",
         "the header goes before TLS"),
        ({"protocol": "tcp", "access": {"rules": [{"action": "allow", "cidr": "10.0.0.0/33"}]}},
         "access.rules[0].cidr", "is not a CIDR"),
        ({"protocol": "tcp", "access": {"mode": "password", "password": "long enough"}}, "access.mode", "has no login"),
        ({"domain": "a.example.com", "access": {"maxConnectionsPerSource": 2}}, "access.maxConnectionsPerSource",
         "only for a tcp or udp tunnel"),
    ]
    for fields, field, message in cases:
        body = {"agentId": agent["id"], "target": "localhost:22", **fields}
        response = await control.api.post("/api/tunnels", json=body)
        assert response.status_code == 400, (fields, response.text)
        assert message in response.json()["details"][field], (fields, response.json())


async def test_patch_moves_the_port_and_the_push_follows(control):
    agent = await control.create("agents", name="laptop")
    gw = await control.create("gateways", name="gw1")
    async with connect(control, gw["apiKey"], "gateway", public_key(), "203.0.113.1:51820") as gateway, \
            connect(control, agent["apiKey"], "agent", public_key()) as agent_ws:
        tunnel = await control.create("tunnels", protocol="udp", agentId=agent["id"], target="localhost:53",
                                      udpIdleTimeout=5, udpMaxFlows=10,
                                      access={"rules": [{"action": "allow", "cidr": "127.0.0.1/8"}],
                                              "maxConnectionsPerSource": 3})
        config = await gateway.config()
        assert config.routes == []  # no HTTP route for it
        assert config.ports == [protocol.PortRoute(
            tunnel["id"], "udp", 20000, "10.1.0.2", "10.1.0.254", udp_idle_timeout=5.0, udp_max_flows=10,
            access_rules=[protocol.AccessRule("allow", "127.0.0.0/8")], max_connections_per_source=3)]
        mapping = (await agent_ws.config()).tunnels[0]
        assert mapping.protocol == "udp" and mapping.target == "localhost:53"

        patched = await control.api.patch(f"/api/tunnels/{tunnel['id']}", json={
            "publicPort": 20005, "target": "127.0.0.1:5353", "enabled": False})
        assert patched.status_code == 200 and patched.json()["publicPort"] == 20005
        route = (await gateway.config()).ports[0]
        assert (route.public_port, route.enabled) == (20005, False)
        assert (await agent_ws.config()).tunnels[0].target == "127.0.0.1:5353"

        changed = await control.api.patch(f"/api/tunnels/{tunnel['id']}", json={"protocol": "tcp"})
        assert changed.status_code == 400 and "cannot change" in changed.json()["details"]["protocol"]


async def test_an_http_tunnel_takes_a_proxy_protocol_and_its_route_carries_it(control):
    agent = await control.create("agents", name="laptop")
    gw = await control.create("gateways", name="gw1")
    async with connect(control, gw["apiKey"], "gateway", public_key(), "203.0.113.1:51820") as gateway:
        tunnel = await control.create("tunnels", domain="web.example.com", agentId=agent["id"],
                                      target="localhost:80", proxyProtocol="v1")
        assert (tunnel["protocol"], tunnel["proxyProtocol"], tunnel["publicPort"]) == ("http", "v1", None)
        assert [r.proxy_protocol for r in (await gateway.config()).routes] == ["v1"]
        patched = await control.api.patch(f"/api/tunnels/{tunnel['id']}", json={"proxyProtocol": "v2"})
        assert patched.status_code == 200 and patched.json()["proxyProtocol"] == "v2"
        assert [r.proxy_protocol for r in (await gateway.config()).routes] == ["v2"]
        patched = await control.api.patch(f"/api/tunnels/{tunnel['id']}", json={"proxyProtocol": None})
        assert patched.status_code == 200 and patched.json()["proxyProtocol"] is None
        route = (await gateway.config()).routes[0]
        assert route.proxy_protocol is msgspec.UNSET  # left out of the frame, as version 1 sent it
        assert (await control.api.get(f"/api/tunnels/{tunnel['id']}")).json()["proxyProtocol"] is None


async def test_a_gateway_that_cannot_bind_is_shown_on_the_tunnel(control):
    agent = await control.create("agents", name="laptop")
    gw = await control.create("gateways", name="gw1")
    tunnel = await control.create("tunnels", protocol="tcp", agentId=agent["id"], target="localhost:22")
    async with connect(control, gw["apiKey"], "gateway", public_key(), "203.0.113.1:51820") as gateway:
        await gateway.send(protocol.StatusUpdate(protocol.Stats(
            {"portErrors": {tunnel["id"]: "tcp port 20000: Address already in use"}})))
        await gateway.send(protocol.Ping())
        await gateway.receive_pong()
        shown = (await control.api.get(f"/api/tunnels/{tunnel['id']}")).json()
        assert shown["bindErrors"] == {"gw1": "tcp port 20000: Address already in use"}


def test_public_ports_flag(monkeypatch):
    assert cli.parser().parse_args(["--public-ports", "22, 20000-29999"]).public_ports == "22,20000-29999"
    with pytest.raises(SystemExit):
        cli.parser().parse_args(["--public-ports", "3000-2000"])
    monkeypatch.setenv("KAKUREMICHI_PUBLIC_PORTS", "4000-4001")
    assert cli.parser().parse_args([]).public_ports == "4000-4001"


async def test_the_web_ui_adds_a_tcp_tunnel_and_shows_its_port_and_bind_failure(control):
    from tests.control.test_web import _csrf, _logged_in

    agent = await control.create("agents", name="home")
    gw = await control.create("gateways", name="gw1")
    async with _logged_in(control.url) as browser, \
            connect(control, gw["apiKey"], "gateway", public_key(), "203.0.113.1:51820") as gateway:
        page = await browser.get("/tunnels/new")
        assert 'name="protocol"' in page.text and 'name="publicPort"' in page.text
        form = {"csrf_token": _csrf(page), "protocol": "udp", "domain": "", "name": "dns", "agentId": agent["id"],
                "target": "127.0.0.1:53", "publicPort": "", "proxyProtocol": "v1", "tlsMode": "acme", "enabled": "on"}
        refused = await browser.post("/tunnels/new", data=form)
        assert refused.status_code == 400 and "use v2 for a udp tunnel" in refused.text
        saved = await browser.post("/tunnels/new", data={**form, "protocol": "tcp"})
        assert saved.status_code == 302
        tunnel = (await control.api.get("/api/tunnels")).json()["items"][0]
        assert (tunnel["protocol"], tunnel["publicPort"], tunnel["name"]) == ("tcp", 20000, "dns")
        assert tunnel["domain"] is None
        assert (await gateway.config()).ports[0].public_port == 20000
        await gateway.send(protocol.StatusUpdate(protocol.Stats(
            {"portErrors": {tunnel["id"]: "tcp port 20000: Permission denied"}})))
        await gateway.send(protocol.Ping())
        await gateway.receive_pong()
        listed = await browser.get("/tunnels")
        assert "<code>tcp/20000</code>" in listed.text and "PROXY v1" in listed.text and ">dns</a>" in listed.text
        assert "gw1: cannot listen (tcp port 20000: Permission denied)" in listed.text
        edit = await browser.get(f"/tunnels/{tunnel['id']}/edit")
        assert "Edit dns" in edit.text and 'value="20000"' in edit.text

        udp = {**form, "csrf_token": _csrf(edit), "proxyProtocol": "v2", "udpIdleTimeout": "soon", "udpMaxFlows": "8"}
        refused = await browser.post("/tunnels/new", data=udp)
        assert refused.status_code == 400 and 'id="f-udpIdleTimeout-error"' in refused.text
        assert (await browser.post("/tunnels/new", data={**udp, "udpIdleTimeout": "2.5"})).status_code == 302
        made = [t for t in (await control.api.get("/api/tunnels")).json()["items"] if t["protocol"] == "udp"]
        assert (made[0]["udpIdleTimeout"], made[0]["udpMaxFlows"]) == (2.5, 8)

        web = {**form, "csrf_token": _csrf(edit), "protocol": "http", "domain": "web.example.com", "name": "",
               "target": "127.0.0.1:8080", "proxyProtocol": "v2"}
        before = (await browser.get("/tunnels")).text.count("PROXY v2")  # the udp tunnel's
        assert (await browser.post("/tunnels/new", data=web)).status_code == 302
        made = [t for t in (await control.api.get("/api/tunnels")).json()["items"] if t["protocol"] == "http"]
        assert made[0]["proxyProtocol"] == "v2" and made[0]["publicPort"] is None
        assert (await browser.get("/tunnels")).text.count("PROXY v2") == before + 1
        assert "TCP, UDP and HTTP" in (await browser.get(f"/tunnels/{made[0]['id']}/edit")).text
