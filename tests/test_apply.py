"""`kakuremichi apply -f` against a real control process: it creates what the file lists, a second run changes
nothing, an edit is shown as a diff and made, --prune deletes what is not listed, --dry-run changes nothing, and
a file the API would refuse is refused whole before anything is sent."""

from __future__ import annotations

import subprocess
import sys

import pytest

from kakuremichi import manifest
from tests.deployment import ADMIN, Deployment, child_env

FILE = """\
gateways:
  - name: gw1
    wireguardPort: 51820
agents:
  - name: home
    metadata: {site: attic}
tunnels:
  - domain: App.Example.com
    agent: home
    target: http://localhost:8080/
    tlsMode: "off"
"""


@pytest.fixture
def control(tmp_path):
    deployment = Deployment(tmp_path, apps={}, gateways=(), agent=False)
    yield deployment
    deployment.close()


def apply(control: Deployment, text: str, *flags: str) -> subprocess.CompletedProcess:
    path = control.tmp / "kakuremichi.yaml"
    path.write_text(text)
    env = dict(child_env(), KAKUREMICHI_ADMIN_TOKEN=ADMIN)
    return subprocess.run([sys.executable, "-m", "kakuremichi", "apply", "-f", str(path), "--control-url",
                           f"http://127.0.0.1:{control.control_port}", *flags], env=env, capture_output=True,
                          text=True, timeout=60)


def items(control: Deployment, kind: str) -> dict[str, dict]:
    key = "domain" if kind == "tunnel" else "name"
    return {item[key]: item for item in control.api.get(f"/api/{kind}s").json()["items"]}


def test_applying_twice_creates_once_then_changes_nothing(control):
    first = apply(control, FILE)
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines()[:3] == ['+ gateway gw1 wireguardPort=51820',
                                             '+ agent home metadata={"site": "attic"}',
                                             '+ tunnel app.example.com target="localhost:8080" tlsMode="off" '
                                             'agent="home"']
    assert "agent home API key (shown once" in first.stdout and "agt_" in first.stdout
    assert first.stdout.splitlines()[-1] == "3 created, 0 changed, 0 deleted, 0 unchanged"
    tunnel = items(control, "tunnel")["app.example.com"]
    assert tunnel["agentId"] == items(control, "agent")["home"]["id"] and tunnel["tlsMode"] == "off"
    assert items(control, "gateway")["gw1"]["wireguardPort"] == 51820
    home = items(control, "agent")["home"]  # as a connected agent's heartbeats leave it:
    control.api.patch(f"/api/agents/{home['id']}", json={"metadata": {"site": "attic", "stats": {"tunnels": 1}}})
    second = apply(control, FILE)
    assert second.returncode == 0, second.stderr
    assert second.stdout == "no changes (3 unchanged)\n"  # control's own stats are no difference
    assert len(items(control, "agent")) == len(items(control, "tunnel")) == 1


def test_an_edit_is_shown_as_a_diff_and_made(control):
    assert apply(control, FILE).returncode == 0
    result = apply(control, FILE.replace("8080", "9090").replace("attic", "cellar"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ['~ agent home: metadata: {"site": "attic"} -> {"site": "cellar"}',
                                          '~ tunnel app.example.com: target: "localhost:8080" -> "localhost:9090"',
                                          "0 created, 2 changed, 0 deleted, 1 unchanged"]
    assert items(control, "tunnel")["app.example.com"]["target"] == "localhost:9090"
    assert items(control, "agent")["home"]["metadata"] == {"site": "cellar"}


def test_prune_deletes_what_a_listed_section_does_not_list(control, tmp_path):
    assert apply(control, FILE).returncode == 0
    spare = control.create("agents", "spare")
    control.api.post("/api/tunnels", json={"domain": "old.example.com", "agentId": spare["id"],
                                           "target": "localhost:1", "tlsMode": "off"}).raise_for_status()
    kept = apply(control, FILE)
    assert kept.stdout == "no changes (3 unchanged)\n"  # without --prune, what the file leaves out stays
    assert set(items(control, "agent")) == {"home", "spare"}
    without_gateways = FILE.split("agents:")[0].replace("gateways:\n  - name: gw1\n    wireguardPort: 51820\n", "")
    pruned = apply(control, without_gateways + "agents:" + FILE.split("agents:")[1], "--prune")
    assert pruned.returncode == 0, pruned.stderr
    assert pruned.stdout.splitlines() == ["- tunnel old.example.com", "- agent spare",
                                          "0 created, 0 changed, 2 deleted, 2 unchanged"]
    assert set(items(control, "agent")) == {"home"} and set(items(control, "tunnel")) == {"app.example.com"}
    assert set(items(control, "gateway")) == {"gw1"}  # the file has no gateways section: they are not pruned


def test_a_dry_run_prints_the_changes_and_makes_none(control):
    result = apply(control, FILE, "--dry-run", "--prune")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "3 to create, 0 to change, 0 to delete, 0 unchanged; dry run: nothing " \
                                             "was changed"
    assert not items(control, "agent") and not items(control, "gateway") and not items(control, "tunnel")


def test_new_keys_go_to_private_files_with_key_dir(control, tmp_path):
    result = apply(control, FILE, "--key-dir", str(tmp_path / "keys"))
    assert result.returncode == 0, result.stderr
    assert "agt_" not in result.stdout and "gtw_" not in result.stdout
    key = tmp_path / "keys" / "agent-home.key"
    assert key.read_text().startswith("agt_") and key.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "keys" / "gateway-gw1.key").read_text().startswith("gtw_")


def test_a_file_the_api_would_refuse_is_refused_whole(control):
    bad = FILE.replace("tlsMode: \"off\"", "tlsMode: sometimes") + "  - {domain: com, agent: nobody, target: x}\n"
    result = apply(control, bad)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "tunnels[0] (app.example.com)" not in result.stderr  # an unparsed entry is named by its index
    assert "tunnels[0]: tlsMode: must be one of" in result.stderr
    assert "tunnels[1]: domain:" in result.stderr
    assert not items(control, "agent") and not items(control, "gateway")  # the valid entries were not sent
    unknown_agent = apply(control, FILE.replace("agent: home", "agent: nobody"))
    assert unknown_agent.returncode == 2
    assert "no agent named 'nobody' in this file or in control" in unknown_agent.stderr


def test_a_wrong_admin_token_is_reported_with_controls_answer(control):
    path = control.tmp / "kakuremichi.yaml"
    path.write_text(FILE)
    env = dict(child_env(), KAKUREMICHI_ADMIN_TOKEN="kma_wrong")
    result = subprocess.run([sys.executable, "-m", "kakuremichi", "apply", "-f", str(path), "--control-url",
                             f"http://127.0.0.1:{control.control_port}"], env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith("kakuremichi apply: listing gateways: ") and "(403 forbidden)" in result.stderr


def test_with_prune_a_tunnel_cannot_name_an_agent_that_pruning_deletes():
    wanted = manifest.load("agents: []\ntunnels:\n  - {domain: a.example.com, agent: old, target: 'localhost:1'}\n",
                           "f.yaml")
    existing = {"agent": [{"id": "a1", "name": "old"}], "gateway": [], "tunnel": []}
    assert [c.action for c in manifest.plan(wanted, existing)[0]] == ["create"]  # without --prune, old stays
    with pytest.raises(manifest.ManifestError, match="no agent named 'old' in this file: list it under agents"):
        manifest.plan(wanted, existing, prune=True)  # its tunnel would go with it
