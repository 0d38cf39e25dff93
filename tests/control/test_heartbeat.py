"""Heartbeat: a client that stops talking is closed and marked offline within two intervals."""

from __future__ import annotations

import pytest
import trio

from kakuremichi import protocol
from tests.control.conftest import closed_with, connect


@pytest.fixture
def settings(settings):
    settings.heartbeat_interval = 0.3
    return settings


async def test_silent_client_is_closed_and_marked_offline(control):
    agent = await control.create("agents", name="a")
    async with connect(control, agent["apiKey"], "agent") as client:
        for _ in range(5):  # pinging keeps it online well past two intervals
            await client.send(protocol.Ping())
            await trio.sleep(0.2)
        row = (await control.api.get(f"/api/agents/{agent['id']}")).json()
        assert row["status"] == "online" and row["lastSeenAt"]
        assert await closed_with(client) == 4002
    assert (await control.api.get(f"/api/agents/{agent['id']}")).json()["status"] == "offline"
    assert 'kakuremichi_control_clients_connected{role="agent"} 0' in (await control.api.get("/metrics")).text
