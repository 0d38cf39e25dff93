"""The agent's saved copy of its last config: kept owner-only, read back with the protocol's checks, and
ignored (with a warning) when it cannot be used."""

from __future__ import annotations

import logging

from kakuremichi import protocol as p
from kakuremichi.agent.configcache import ConfigCache

KEY = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
CONFIG = p.AgentConfig(5, ["10.1.0.2"], [p.GatewayPeer(KEY, "203.0.113.1:51820", ["10.1.0.254/32"], 25)], [
    p.TunnelMapping("t1", "app.example.com", "10.1.0.2", "localhost:8080")])


def test_a_saved_config_reads_back_equal_and_owner_only(tmp_path):
    cache = ConfigCache(tmp_path / "agent" / "config.json")
    assert cache.load() is None  # nothing saved yet
    cache.save(CONFIG)
    assert cache.load() == CONFIG
    assert cache.path.stat().st_mode & 0o777 == 0o600
    assert not cache.path.with_name("config.json.partial").exists()


def test_an_unusable_copy_is_ignored_with_a_warning(tmp_path, caplog):
    cache = ConfigCache(tmp_path / "config.json")
    gateway_config = p.ConfigUpdate(p.GatewayConfig(4, 51820, ["10.1.0.254"])).to_json()
    tampered = p.ConfigUpdate(CONFIG).to_json().replace("localhost:8080", "localhost:99999")
    for text in ("{not json", gateway_config, tampered, b"\xff\xfe"):
        if isinstance(text, bytes):
            cache.path.write_bytes(text)
        else:
            cache.path.write_text(text)
        with caplog.at_level(logging.WARNING, "kakuremichi.agent"):
            caplog.clear()
            assert cache.load() is None
        assert "waiting for control's" in caplog.text


async def test_a_config_that_cannot_be_saved_is_applied_all_the_same(tmp_path, caplog):
    from kakuremichi.agent.agent import Agent
    from kakuremichi.tunnel import TunnelNode
    from kakuremichi.wg import keys

    blocked = tmp_path / "file-not-dir"
    blocked.write_text("")
    agent = Agent(TunnelNode(keys.generate_private(), listen_host="127.0.0.1"),
                  cache=ConfigCache(blocked / "config.json"))
    with caplog.at_level(logging.WARNING, "kakuremichi.agent"):
        await agent.apply(CONFIG)
    assert agent.config_version == 5 and "10.1.0.2" in agent.targets
    assert "cannot save the config" in caplog.text
    agent.node.interface.sock.close()
