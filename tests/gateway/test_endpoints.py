"""The gateway's memory of where its agents were: survives a restart, shrugs off a damaged file."""

from __future__ import annotations

import logging

from kakuremichi.gateway.endpoints import EndpointMemory
from kakuremichi.wg import keys
from kakuremichi.wg.device import Device


def test_addresses_survive_a_restart_and_only_changes_are_written(tmp_path):
    device = Device(keys.generate_private())
    agent = keys.public_from_private(keys.generate_private())
    device.add_peer(agent, allowed_ips=["10.1.0.2/32"], endpoint=("192.0.2.7", 40123))
    path = tmp_path / "agent-endpoints.json"
    memory = EndpointMemory(path)
    memory.save(device)
    written = path.stat().st_mtime_ns
    memory.save(device)  # unchanged: not rewritten
    assert path.stat().st_mtime_ns == written
    assert EndpointMemory(path).recall(agent) == ("192.0.2.7", 40123)
    assert EndpointMemory(path).recall(keys.public_from_private(keys.generate_private())) is None
    assert not list(tmp_path.glob("*.tmp"))


def test_a_damaged_file_is_ignored_with_a_warning(tmp_path, caplog):
    path = tmp_path / "agent-endpoints.json"
    path.write_text('{"not a key": 3')
    with caplog.at_level(logging.WARNING):
        memory = EndpointMemory(path)
    assert memory.recall(b"\0" * 32) is None
    assert "unreadable agent address file" in caplog.text
