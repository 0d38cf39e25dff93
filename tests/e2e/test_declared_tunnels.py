"""An agent's own tunnels file, every component a process: control makes its tunnels under the domains the
admin delegated to the agent, follows the file's edits (a changed target, a removed tunnel), refuses the
others until they are delegated, and leaves the tunnels the admin made alone."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from tests.deployment import Deployment, child_env, wait_for
from tests.e2e.test_tunnel_end_to_end import APP, serves


def tunnels_file(path, entries: dict[str, int]) -> None:
    """Write the file (domain → app port), with a new modification time even within the same second."""
    path.write_text("tunnels:\n" + "".join(f"  - domain: {domain}\n    target: 127.0.0.1:{port}\n    tlsMode: \"off\"\n"
                                           for domain, port in entries.items()))
    stamp = time.time() + 1
    os.utime(path, (stamp, stamp))


@pytest.fixture
def deployment(tmp_path):
    d = Deployment(tmp_path, apps={"one": ("-c", APP), "two": ("-c", APP)}, gateways=("gw1",), agent=False)
    try:
        yield d
    finally:
        d.close()


def domains(deployment: Deployment) -> dict[str, str]:
    return {t["domain"]: t["target"] for t in deployment.api.get("/api/tunnels").json()["items"]}


def test_the_agents_tunnels_file_is_made_and_followed_within_its_delegated_domains(deployment, tmp_path):
    d, path = deployment, tmp_path / "tunnels.yaml"
    response = d.api.post("/api/agents", json={"name": "home", "metadata": {"delegatedDomains": ["home.test"]}})
    agent = response.json()
    d.agent_id = agent["id"]
    d.tunnel("admin.example.test", "one")  # the admin's own tunnel of this agent, outside the delegation
    tunnels_file(path, {"app.home.test": d.apps["one"], "later.example.net": d.apps["two"]})
    d.agent = d.spawn("kakuremichi.agent", "--control-url", f"http://127.0.0.1:{d.control_port}", "--api-key",
                      agent["apiKey"], "--data-dir", str(tmp_path / "agent"), "--heartbeat-interval", d.heartbeat,
                      "--tunnels-file", str(path))
    wait_for(lambda: serves(d, "gw1", "app.home.test", "one"), 30, "the declared tunnel")
    log = tmp_path / "agentagent.log"
    wait_for(lambda: "control refused a declared tunnel" in log.read_text(), 10, "the refusal")
    assert "later.example.net" in log.read_text() and "later.example.net" not in domains(d)

    d.api.patch(f"/api/agents/{d.agent_id}", json={"metadata": {"delegatedDomains": ["home.test", "example.net"]}})
    wait_for(lambda: serves(d, "gw1", "later.example.net", "two"), 30, "the refused one, once delegated")

    tunnels_file(path, {"app.home.test": d.apps["two"]})  # re-targeted; later.example.net removed
    wait_for(lambda: serves(d, "gw1", "app.home.test", "two"), 30, "the edit")
    wait_for(lambda: "later.example.net" not in domains(d), 10, "the removed tunnel to go")
    assert set(domains(d)) == {"app.home.test", "admin.example.test"}  # the admin's tunnel stays
    assert serves(d, "gw1", "admin.example.test", "one")


def test_a_broken_tunnels_file_stops_the_agent_with_the_reason(tmp_path):
    path = tmp_path / "tunnels.yaml"
    path.write_text("tunnels:\n  - domain: com\n    target: 127.0.0.1:1\n")
    result = subprocess.run([sys.executable, "-m", "kakuremichi.agent", "--control-url", "http://127.0.0.1:9",
                             "--api-key", "agt_x", "--data-dir", str(tmp_path / "agent"), "--tunnels-file", str(path)],
                            env=child_env(), capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"{path}: tunnels[0].domain: 'com' has one label" in result.stderr
