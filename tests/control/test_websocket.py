"""The /ws protocol against a running control: auth, config pushes after every kind of change, heartbeat."""

from __future__ import annotations

import time

import pytest
import trio
from trio_websocket import open_websocket_url

from kakuremichi import protocol
from kakuremichi.control import configs
from tests.control.conftest import WsClient, closed_with, connect, public_key

pytestmark = pytest.mark.both_databases


@pytest.mark.parametrize("role, key_of, code", [
    ("gateway", lambda keys: "gtw_" + "x" * 43, "invalid_key"),
    ("agent", lambda keys: keys["gateway"], "wrong_role"),
    ("gateway", lambda keys: keys["agent"], "wrong_role"),
])
async def test_bad_keys_get_auth_error_and_close_4001(control, role, key_of, code):
    keys = {"agent": (await control.create("agents", name="a"))["apiKey"],
            "gateway": (await control.create("gateways", name="g"))["apiKey"]}
    async with open_websocket_url(control.ws_url) as ws:
        client = WsClient(ws)
        await client.send(protocol.Auth(key_of(keys), role, public_key(), "203.0.113.1:51820"))
        error = await client.receive()
        assert isinstance(error, protocol.AuthError) and error.code == code
        assert await closed_with(client) == 4001
    metrics = (await control.api.get("/metrics")).text
    assert f'kakuremichi_control_auth_failures_total{{reason="{code}"}} 1' in metrics


async def test_first_message_must_be_auth_in_time(control):
    async with open_websocket_url(control.ws_url) as ws:
        client = WsClient(ws)
        await client.send(protocol.Ping())
        assert (await client.receive()).code == "bad_request"
        assert await closed_with(client) == 4000
    async with open_websocket_url(control.ws_url) as ws:
        await ws.send_message('{"type": "auth", "apiKey": 5}')
        assert await closed_with(WsClient(ws)) == 4000
    async with open_websocket_url(control.ws_url) as ws:  # says nothing: auth_timeout is 1 s here
        assert await closed_with(WsClient(ws)) == 4003


async def test_configs_follow_every_change(control):
    agent = await control.create("agents", name="laptop")
    gw = await control.create("gateways", name="gw1", wireguardPort=51820)
    agent_key, gw_key = public_key(), public_key()
    async with connect(control, gw["apiKey"], "gateway", gw_key, "203.0.113.1:51820") as gateway, \
            connect(control, agent["apiKey"], "agent", agent_key) as agent_ws:
        assert gateway.welcome.heartbeat_interval == control.settings.heartbeat_interval
        assert gateway.first_config.wireguard_port == 51820 and gateway.first_config.routes == []
        assert agent_ws.first_config.tunnels == [] and agent_ws.first_config.gateways == []

        # tunnel created: the gateway gets a route and the agent as peer, the agent its mapping and the gateway
        tunnel = await control.create("tunnels", domain="app.example.com", agentId=agent["id"],
                                      target="localhost:8080", tlsMode="off")
        g = await gateway.config()
        assert g.routes == [protocol.RouteConfig("app.example.com", "10.1.0.2", "10.1.0.254", tunnel["id"],
                                                 tls_mode="off")]
        # both are kakuremichi nodes: neither checks TCP checksums across WireGuard, so neither needs them
        assert g.peers == [protocol.AgentPeer(agent_key, ["10.1.0.2/32"], skips_checksums=True)]
        assert g.addresses == ["10.1.0.254"]
        a = await agent_ws.config()
        assert a.addresses == ["10.1.0.2"]
        assert a.gateways == [protocol.GatewayPeer(gw_key, "203.0.113.1:51820", ["10.1.0.254/32"],
                                                skips_checksums=True)]
        assert a.tunnels == [protocol.TunnelMapping(tunnel["id"], "app.example.com", "10.1.0.2", "localhost:8080",
                                                    gateway_ips=["10.1.0.254"])]
        assert a.version > agent_ws.first_config.version

        # a proxy flag opens the gateway's exit to the tunnel's agent, and tells the agent which proxy to offer
        await control.api.patch(f"/api/tunnels/{tunnel['id']}", json={"socksProxyEnabled": True})
        assert (await gateway.config()).routes[0].exit is True
        mapping = (await agent_ws.config()).tunnels[0]
        assert mapping.socks_proxy is True and mapping.http_proxy is False

        # tunnel updated
        await control.api.patch(f"/api/tunnels/{tunnel['id']}", json={"enabled": False, "target": "localhost:9"})
        route = (await gateway.config()).routes[0]
        assert route.enabled is False and route.exit is False  # a disabled tunnel has no exit either
        assert (await agent_ws.config()).tunnels[0].target == "localhost:9"

        # gateway changed: only the gateway's own config differs, so only it hears about it
        await control.api.patch(f"/api/gateways/{gw['id']}", json={"wireguardPort": 51821})
        assert (await gateway.config()).wireguard_port == 51821

        # a second gateway appears and connects: the agent peers with it, the first gateway is unaffected
        gw2 = await control.create("gateways", name="gw2")
        gw2_key = public_key()
        async with connect(control, gw2["apiKey"], "gateway", gw2_key, "198.51.100.2:51820") as gateway2:
            assert gateway2.first_config.routes[0].gateway_ip == "10.1.0.253"
            peers = (await agent_ws.config()).gateways
            assert {p.public_key for p in peers} == {gw_key, gw2_key}

        # agent changed: a new key reported on reconnect reaches the gateway
        with pytest.raises(trio.TooSlowError):
            await gateway.receive(timeout=0.3)
        new_agent_key = public_key()
        async with connect(control, agent["apiKey"], "agent", new_agent_key):
            assert (await gateway.config()).peers[0].public_key == new_agent_key

        # tunnel deleted
        await control.api.delete(f"/api/tunnels/{tunnel['id']}")
        assert (await gateway.config()).routes == []

        # agent deleted: the gateway loses the peer (already gone with the tunnel), the agent is told to go
        await control.create("tunnels", domain="b.example.com", agentId=agent["id"], target="localhost:1")
        assert len((await gateway.config()).peers) == 1
        await control.api.delete(f"/api/agents/{agent['id']}")
        assert (await gateway.config()).peers == []


async def test_deleted_and_rotated_clients_are_disconnected(control):
    agent = await control.create("agents", name="a")
    async with connect(control, agent["apiKey"], "agent") as client:
        rotated = (await control.api.post(f"/api/agents/{agent['id']}/rotate-key")).json()["apiKey"]
        assert await closed_with(client) == 4001
    async with open_websocket_url(control.ws_url) as ws:
        old = WsClient(ws)
        await old.send(protocol.Auth(agent["apiKey"], "agent", public_key()))
        assert (await old.receive()).code == "invalid_key"
    async with connect(control, rotated, "agent") as client:
        await control.api.delete(f"/api/agents/{agent['id']}")
        assert await closed_with(client) == 4005


async def test_a_gateways_workers_are_gateways_of_their_own_listed_under_it(control):
    """`kakuremichi gateway --workers 2`: worker 1 logs in with its gateway's key and becomes an agent's peer of its
    own, with its own address in the tunnel; the API lists one gateway; the gateway's key and deletion end both."""
    agent = await control.create("agents", name="laptop")
    gw = await control.create("gateways", name="gw1")
    tunnel = await control.create("tunnels", domain="app.example.com", agentId=agent["id"], target="localhost:8080",
                                  tlsMode="off")
    worker_key = public_key()
    async with connect(control, agent["apiKey"], "agent") as agent_ws, \
            connect(control, gw["apiKey"], "gateway", endpoint="203.0.113.1:51820") as gateway, \
            connect(control, gw["apiKey"], "gateway", worker_key, "203.0.113.1:51821", worker=1) as worker:
        assert worker.welcome.name == "gw1#1" and worker.welcome.client_id != gateway.welcome.client_id
        assert [r.gateway_ip for r in worker.first_config.routes] == ["10.1.0.253"]
        peers = agent_ws.first_config.gateways
        while len(peers) < 2:
            peers = (await agent_ws.config()).gateways
        assert {(p.endpoint, tuple(p.allowed_ips)) for p in peers} == {("203.0.113.1:51820", ("10.1.0.254/32",)),
                                                                         ("203.0.113.1:51821", ("10.1.0.253/32",))}
        listed = (await control.api.get("/api/gateways")).json()
        assert listed["total"] == 1 and listed["items"][0]["id"] == gw["id"]
        (shown,) = listed["items"][0]["workers"]
        assert shown["index"] == 1 and shown["publicKey"] == worker_key and shown["status"] == "online"
        assert set((await control.api.get(f"/api/tunnels/{tunnel['id']}")).json()["gatewayIps"]) == {gw["id"],
                                                                                                    shown["id"]}
        await control.api.post(f"/api/gateways/{gw['id']}/rotate-key")
        assert await closed_with(gateway) == 4001 and await closed_with(worker) == 4001
    assert (await control.api.delete(f"/api/gateways/{gw['id']}")).status_code == 204
    assert (await control.api.get(f"/api/gateways/{shown['id']}")).status_code == 404  # went with its gateway
    assert (await control.api.get(f"/api/tunnels/{tunnel['id']}")).json()["gatewayIps"] == {}


async def test_reconnect_never_erases_the_reported_endpoint(control):
    gw = await control.create("gateways", name="g")
    key = public_key()
    async with connect(control, gw["apiKey"], "gateway", key, "203.0.113.9:51820"):
        pass
    async with connect(control, gw["apiKey"], "gateway", key, None):
        stored = (await control.api.get(f"/api/gateways/{gw['id']}")).json()
    assert stored["publicEndpoint"] == "203.0.113.9:51820" and stored["publicKey"] == key


async def test_status_updates_are_kept_with_the_client(control):
    gw = await control.create("gateways", name="g")
    async with connect(control, gw["apiKey"], "gateway", endpoint="203.0.113.9:51820") as client:
        await client.send(protocol.StatusUpdate({"routes": 3}))
        await client.send(protocol.Ping())  # answered after the status was stored
        await client.receive_pong()
        assert (await control.api.get(f"/api/gateways/{gw['id']}")).json()["metadata"] == {"stats": {"routes": 3}}


async def test_a_client_cannot_claim_another_clients_public_key(control):
    """Public keys are shown in the API: an agent announcing its victim's must not get the victim's peer."""
    victim, thief = (await control.create("agents", name="victim")), (await control.create("agents", name="thief"))
    gw = await control.create("gateways", name="gw1")
    tunnel = await control.create("tunnels", domain="app.example.com", agentId=victim["id"], target="localhost:8080",
                                  tlsMode="off")
    victim_key = public_key()
    async with connect(control, gw["apiKey"], "gateway", endpoint="203.0.113.1:51820") as gateway, \
            connect(control, victim["apiKey"], "agent", victim_key) as victim_ws:
        assert [p.public_key for p in (await gateway.config()).peers] == [victim_key]
        async with open_websocket_url(control.ws_url) as ws:
            client = WsClient(ws)
            await client.send(protocol.Auth(thief["apiKey"], "agent", victim_key))
            refused = await client.receive()
            assert isinstance(refused, protocol.AuthError) and refused.code == "public_key_in_use"
            assert await closed_with(client) == 4001
        async with open_websocket_url(control.ws_url) as ws:  # nor may a gateway take an agent's
            client = WsClient(ws)
            other_gw = await control.create("gateways", name="gw2")
            await client.send(protocol.Auth(other_gw["apiKey"], "gateway", victim_key, "203.0.113.2:51820"))
            assert (await client.receive()).code == "public_key_in_use"
        await victim_ws.send(protocol.Ping())
        await victim_ws.receive_pong()  # still connected
        assert (await control.api.get(f"/api/agents/{victim['id']}")).json()["publicKey"] == victim_key
        assert (await control.api.get(f"/api/agents/{thief['id']}")).json()["publicKey"] is None
    async with connect(control, gw["apiKey"], "gateway", endpoint="203.0.113.1:51820") as gateway:
        peer, = gateway.first_config.peers
        assert peer.public_key == victim_key and peer.allowed_ips == ["10.1.0.2/32"]
        assert gateway.first_config.routes[0].tunnel_id == tunnel["id"]
    async with connect(control, victim["apiKey"], "agent", public_key()):  # its own new key frees the old one
        pass
    async with connect(control, thief["apiKey"], "agent", victim_key):
        pass
    await control.api.delete(f"/api/agents/{thief['id']}")  # and a deleted client's key is free again
    async with connect(control, victim["apiKey"], "agent", victim_key):
        pass


async def test_an_agent_that_says_it_stops_is_marked_stopped_in_gateway_configs_until_it_returns(control):
    agent = await control.create("agents", name="laptop")
    gw = await control.create("gateways", name="gw1")
    agent_key = public_key()
    async with connect(control, gw["apiKey"], "gateway", public_key(), "203.0.113.1:51820") as gateway:
        async with connect(control, agent["apiKey"], "agent", agent_key):
            await control.create("tunnels", domain="app.example.com", agentId=agent["id"], target="localhost:8080",
                                 tlsMode="off")
            assert (await gateway.config()).routes[0].agent_stopped is False
        # a connection that just ends (control lost, a crash) changes nothing for the gateways
        with trio.fail_after(5):
            while (row := (await control.api.get(f"/api/agents/{agent['id']}")).json())["status"] != "offline":
                await trio.sleep(0.05)
        assert "stopped" not in (row.get("metadata") or {})
        async with connect(control, agent["apiKey"], "agent", agent_key) as agent_ws:
            await agent_ws.send(protocol.Stopping())
            assert (await gateway.config()).routes[0].agent_stopped is True
        async with connect(control, agent["apiKey"], "agent", agent_key):
            assert (await gateway.config()).routes[0].agent_stopped is False


async def test_an_agent_connecting_rebuilds_the_gateways_configs_not_the_other_agents(control, monkeypatch):
    """Each rebuild costs a client in proportion to its tunnels: with a hundred agents connecting, waking
    every agent for each one made the hundredth wait for ten thousand rebuilds."""
    builds: list[str] = []
    real = configs.config_for

    def counted(db, role, client_id, *rest):
        builds.append(role)
        return real(db, role, client_id, *rest)

    monkeypatch.setattr(configs, "config_for", counted)
    first, second = [await control.create("agents", name=name) for name in ("one", "two")]
    gw = await control.create("gateways", name="gw1")
    for agent in (first, second):
        await control.create("tunnels", domain=f"{agent['name']}.example.com", agentId=agent["id"],
                             target="localhost:8080", tlsMode="off")
    async with connect(control, gw["apiKey"], "gateway", endpoint="203.0.113.1:51820") as gateway, \
            connect(control, first["apiKey"], "agent"):
        config = gateway.first_config
        while not config.peers:  # the first agent has reached the gateway
            config = await gateway.config()
        await trio.sleep(0.2)
        builds.clear()
        second_key = public_key()
        async with connect(control, second["apiKey"], "agent", second_key):
            while second_key not in {peer.public_key for peer in (await gateway.config()).peers}:
                pass
            await trio.sleep(0.2)  # anything else woken has rebuilt by now
    assert builds.count("agent") == 1  # the new agent's own first config; the first agent was left alone
    assert builds.count("gateway") >= 1


async def test_a_burst_of_changes_is_folded_into_fewer_rebuilds_of_a_costly_config(control, monkeypatch):
    """A gateway's config costs in proportion to all the tunnels (here 50 ms, as at a few hundred): after
    each rebuild the pusher waits twice as long before the next, so twenty edits back to back cost a few
    rebuilds, not twenty, and the last edit still arrives."""
    builds: list[str] = []
    real = configs.config_for

    def costly(db, role, client_id, *rest):
        if role == "gateway":
            builds.append(role)
            time.sleep(0.05)
        return real(db, role, client_id, *rest)

    agent = await control.create("agents", name="a")
    gw = await control.create("gateways", name="gw1")
    tunnel = await control.create("tunnels", domain="burst.example.com", agentId=agent["id"],
                                  target="localhost:8080", tlsMode="off")
    async with connect(control, gw["apiKey"], "gateway", endpoint="203.0.113.1:51820") as gateway:
        monkeypatch.setattr(configs, "config_for", costly)
        for i in range(20):
            response = await control.api.patch(f"/api/tunnels/{tunnel['id']}", json={"domain": f"b{i}.example.com"})
            assert response.status_code == 200
        with trio.fail_after(5):
            while (await gateway.config()).routes[0].domain != "b19.example.com":  # the last edit arrives
                pass
    assert len(builds) < 12, builds


async def test_a_tunnel_edit_rebuilds_the_configs_of_its_own_agents_and_the_gateways_only(control, monkeypatch):
    """... and moving a tunnel to another agent reaches both: the one that loses it and the one that gains it."""
    builds: list[tuple[str, str]] = []
    real = configs.config_for

    def counted(db, role, client_id, *rest):
        builds.append((role, client_id))
        return real(db, role, client_id, *rest)

    one, two, three = [await control.create("agents", name=name) for name in ("one", "two", "three")]
    gw = await control.create("gateways", name="gw1")
    tunnel = await control.create("tunnels", domain="moved.example.com", agentId=one["id"], target="localhost:8080",
                                  tlsMode="off")
    async with connect(control, gw["apiKey"], "gateway", endpoint="203.0.113.1:51820") as gateway, \
            connect(control, one["apiKey"], "agent") as first, connect(control, two["apiKey"], "agent") as second, \
            connect(control, three["apiKey"], "agent"):
        monkeypatch.setattr(configs, "config_for", counted)
        with trio.fail_after(10):  # what the connections woke has rebuilt (late, on a loaded machine): quiet
            while True:
                seen = len(builds)
                await trio.sleep(0.5)
                if len(builds) == seen:
                    break
        builds.clear()
        await control.api.patch(f"/api/tunnels/{tunnel['id']}", json={"target": "localhost:9"})
        assert (await first.config()).tunnels[0].target == "localhost:9"
        await control.api.patch(f"/api/tunnels/{tunnel['id']}", json={"agentId": two["id"]})
        assert (await first.config()).tunnels == []
        assert [t.domain for t in (await second.config()).tunnels] == ["moved.example.com"]
        await control.api.delete(f"/api/tunnels/{tunnel['id']}")
        assert (await second.config()).tunnels == []
        while (await gateway.config()).routes:
            pass
        await trio.sleep(0.3)
    assert {client for role, client in builds if role == "agent"} == {one["id"], two["id"]}  # never three
