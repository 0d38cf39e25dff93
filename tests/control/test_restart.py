"""Control as its own process and across restarts: data kept, admin token generated once, clients resync."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import httpx
import trio

from kakuremichi import protocol
from kakuremichi.controlclient import ControlClient
from kakuremichi.control.server import serve
from tests.control.conftest import free_port, public_key, start_control


def _start(data_dir: str, port: int) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.getcwd(), "KAKUREMICHI_DATA_DIR": data_dir}
    return subprocess.Popen([sys.executable, "-m", "kakuremichi.control", "--listen", f"127.0.0.1:{port}"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)


async def _wait_healthy(url: str) -> None:
    with trio.fail_after(20):
        while True:
            try:
                async with httpx.AsyncClient() as client:
                    if (await client.get(url + "/healthz")).status_code == 200:
                        return
            except httpx.TransportError:
                await trio.sleep(0.1)


def _stop(process: subprocess.Popen) -> str:
    process.send_signal(signal.SIGTERM)
    out, _ = process.communicate(timeout=10)
    assert process.returncode == 0
    return out


async def test_restart_keeps_data_and_the_generated_admin_token(tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    first = _start(str(tmp_path), port)
    try:
        await _wait_healthy(url)
        async with httpx.AsyncClient(base_url=url) as api:
            out = ""
            token = None
            while token is None:  # the banner is the first line on stdout
                out += first.stdout.readline()
                token = next((w for w in out.split() if w.startswith("kma_")), None)
            api.headers["Authorization"] = f"Bearer {token}"
            agent = (await api.post("/api/agents", json={"name": "a"})).json()
            tunnel = (await api.post("/api/tunnels", json={"domain": "keep.example.com", "agentId": agent["id"],
                                                           "target": "localhost:8080"})).json()
    finally:
        _stop(first)
    second = _start(str(tmp_path), port)
    try:
        await _wait_healthy(url)
        async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {token}"}) as api:
            assert (await api.get(f"/api/tunnels/{tunnel['id']}")).json()["subnet"] == tunnel["subnet"]
            assert (await api.get(f"/api/agents/{agent['id']}")).json()["name"] == "a"
    finally:
        assert "kma_" not in _stop(second)  # printed on the first start only


async def test_control_client_resyncs_after_control_restarts(settings):
    settings.listen = f"127.0.0.1:{free_port()}"
    settings.heartbeat_interval = 0.5
    async with trio.open_nursery() as outer:
        async with trio.open_nursery() as server_scope:
            control = await start_control(server_scope, settings)
            agent = (await control.api.post("/api/agents", json={"name": "a"})).json()
            applied = []

            async def on_config(config: protocol.Config) -> None:
                applied.append(config)

            client = ControlClient(control.url.replace("http", "ws") + "/ws", agent["apiKey"], "agent",
                                   public_key(), on_config=on_config)
            outer.start_soon(client.run)
            with trio.fail_after(5):
                first = await client.wait_for_config()
            assert client.connected and first.tunnels == []
            await control.api.aclose()
            server_scope.cancel_scope.cancel()
        with trio.fail_after(5):
            while client.connected:
                await trio.sleep(0.05)
        async with trio.open_nursery() as server_scope:
            control = await start_control(server_scope, settings)
            await control.api.post("/api/tunnels", json={"domain": "back.example.com", "agentId": agent["id"],
                                                         "target": "localhost:80"})
            with trio.fail_after(10):
                config = await client.wait_for_config(first.version)
            assert [t.domain for t in config.tunnels] == ["back.example.com"] and client.connected
            assert applied[-1] == config
            metrics = (await control.api.get("/metrics")).text
            assert 'kakuremichi_control_config_acks_total{role="agent"}' in metrics
            await control.api.aclose()
            server_scope.cancel_scope.cancel()
        outer.cancel_scope.cancel()


async def test_control_client_keeps_retrying_a_refused_key(settings, caplog):
    settings.listen = f"127.0.0.1:{free_port()}"
    async with trio.open_nursery() as nursery:
        url = await nursery.start(serve, settings)
        client = ControlClient(url.replace("http", "ws") + "/ws", "agt_" + "x" * 43, "agent", public_key())
        nursery.start_soon(client.run)
        with trio.fail_after(5):
            while sum("control refused authentication: invalid_key" in r.getMessage() + str(
                    getattr(r, "fields", "")) for r in caplog.records) < 2:
                await trio.sleep(0.05)
        assert not client.connected and client.last_config is None
        nursery.cancel_scope.cancel()


async def test_control_client_session_outlives_the_auth_timeout(control, monkeypatch):
    """Only the wait for auth_success is timed; an established session must not end with it."""
    import kakuremichi.controlclient as controlclient

    monkeypatch.setattr(controlclient, "AUTH_TIMEOUT", 0.5)
    agent = (await control.api.post("/api/agents", json={"name": "long-lived"})).json()
    client = ControlClient(control.url + "/ws", agent["apiKey"], "agent", public_key(), heartbeat=0.2)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.run)
        with trio.fail_after(5):
            await client.wait_for_config()
        drops = 0
        for _ in range(30):  # 1.5 s: three auth timeouts long
            await trio.sleep(0.05)
            drops += not client.connected
        assert drops == 0
        nursery.cancel_scope.cancel()
