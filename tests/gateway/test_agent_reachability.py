"""How a gateway knows where its agents are: a memory of their addresses that survives a restart and
shrugs off a damaged file, and a quick 502 for an agent that has gone silent."""

from __future__ import annotations

import errno
import json
import logging

import httpx
import pytest
import trio

from kakuremichi.gateway.endpoints import EndpointMemory
from kakuremichi.gateway.gateway import AGENT_SILENCE_LIMIT, Gateway, Listen
from kakuremichi.gateway.routes import Route, RouteTable
from kakuremichi.tunnel import TunnelNode
from kakuremichi.wg import keys
from tests.gateway.conftest import start_gateway


def test_addresses_survive_a_restart_and_only_changes_are_written(tmp_path):
    node = TunnelNode(keys.generate_private(), listen_host="127.0.0.1")
    node.interface.sock.close()  # never run: only its peers matter here
    agent = keys.public_from_private(keys.generate_private())
    node.device.add_peer(agent, allowed_ips=["10.1.0.2/32"], endpoint=("192.0.2.7", 40123))
    path = tmp_path / "agent-endpoints.json"
    memory = EndpointMemory(path)
    memory.save(node)
    written = path.stat().st_mtime_ns
    memory.save(node)  # unchanged: not rewritten
    assert path.stat().st_mtime_ns == written
    assert EndpointMemory(path).recall(agent) == ("192.0.2.7", 40123)
    assert EndpointMemory(path).recall(keys.public_from_private(keys.generate_private())) is None
    assert not list(tmp_path.glob("*.tmp"))


def test_a_worker_recalls_where_its_siblings_saw_an_agent(tmp_path):
    """A gateway worker killed before it saved anything starts again knowing where the agent is."""
    node = TunnelNode(keys.generate_private(), listen_host="127.0.0.1")
    node.interface.sock.close()
    agent, other = (keys.public_from_private(keys.generate_private()) for _ in range(2))
    node.device.add_peer(agent, allowed_ips=["10.1.0.2/32"], endpoint=("192.0.2.7", 40123))
    node.device.add_peer(other, allowed_ips=["10.2.0.2/32"], endpoint=("192.0.2.8", 40124))
    EndpointMemory(tmp_path / "agent-endpoints.json").save(node)
    (tmp_path / "agent-endpoints-worker1.json").write_text(json.dumps({keys.encode(other): ["192.0.2.9", 9]}))
    own = tmp_path / "agent-endpoints-worker1.json"
    memory = EndpointMemory(own, sorted(tmp_path.glob("agent-endpoints*.json")))
    assert memory.recall(agent) == ("192.0.2.7", 40123)  # from worker 0's file
    assert memory.recall(other) == ("192.0.2.9", 9)  # its own file wins
    assert EndpointMemory(own).recall(agent) is None


def test_a_damaged_file_is_ignored_with_a_warning(tmp_path, caplog):
    path = tmp_path / "agent-endpoints.json"
    path.write_text('{"not a key": 3')
    with caplog.at_level(logging.WARNING):
        memory = EndpointMemory(path)
    assert memory.recall(b"\0" * 32) is None
    assert "unreadable agent address file" in caplog.text


async def test_an_agent_silent_past_its_keepalives_gets_a_502_at_once(tmp_path):
    gateway = Gateway(TunnelNode(keys.generate_private(), listen_host="127.0.0.1"), tmp_path,
                      Listen(host="127.0.0.1", http_port=0, https_port=None))
    device = gateway.node.device
    peer = device.add_peer(keys.public_from_private(keys.generate_private()), allowed_ips=["10.1.0.2/32"],
                           endpoint=("127.0.0.1", 9))
    peer.stats.last_received = device.clock() - AGENT_SILENCE_LIMIT - 1
    with trio.fail_after(1), pytest.raises(OSError) as raised:
        await gateway._dial(Route("gone.test", "10.1.0.2", 80))
    assert raised.value.errno == errno.EHOSTUNREACH and "silent for" in str(raised.value)


async def test_a_stopped_agent_gets_502_agent_offline_without_a_dial(nursery):
    dialled = []

    async def dial(route):
        dialled.append(route)
        await trio.sleep_forever()

    gw = await start_gateway(nursery, RouteTable([Route("app.test", "10.1.0.2", 80, agent_stopped=True)]), dial=dial)
    async with httpx.AsyncClient(base_url=gw.url) as client:
        response = await client.get("/", headers={"host": "app.test", "accept": "application/json"})
    assert response.status_code == 502 and response.json()["code"] == "agent_offline"
    assert "app.test has been stopped" in response.json()["details"]
    assert not dialled
