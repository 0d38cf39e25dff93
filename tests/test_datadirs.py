"""Data directories without --data-dir: the platform's per-user directory (XDG_DATA_HOME on Linux), private
from the first byte; a secret file that cannot be restricted on Windows is warned about."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest

from kakuremichi import datadirs
from tests.deployment import ADMIN, Process, child_env, free_port, wait_for


def mode(path) -> int:
    return path.stat().st_mode & 0o777


@pytest.fixture
def data_home(tmp_path):
    if sys.platform != "linux":
        pytest.skip("XDG_DATA_HOME is the Linux convention")
    return tmp_path / "xdg"


def test_the_agent_keeps_its_key_under_xdg_data_home_private(data_home, tmp_path):
    env = dict(child_env(), XDG_DATA_HOME=str(data_home), KAKUREMICHI_API_KEY="agt_" + "x" * 40)
    unreachable = f"http://127.0.0.1:{free_port()}"  # it keeps trying control; its key is made first
    agent = Process("-m", "kakuremichi.agent", "--control-url", unreachable, log=tmp_path / "agent.log", env=env)
    try:
        key = data_home / "kakuremichi" / "agent" / "wireguard.key"
        wait_for(lambda: key.exists() or agent.popen.poll() is not None, 30, "the agent's key")
        assert key.exists(), (tmp_path / "agent.log").read_text()
    finally:
        agent.stop()
    assert mode(data_home) == mode(data_home / "kakuremichi") == mode(key.parent) == 0o700
    assert mode(key) == 0o600


def test_control_keeps_its_database_under_xdg_data_home_private(data_home, tmp_path):
    env = dict(child_env(), XDG_DATA_HOME=str(data_home), KAKUREMICHI_ADMIN_TOKEN=ADMIN)
    port = free_port()
    control = Process("-m", "kakuremichi.control", "--listen", f"127.0.0.1:{port}", log=tmp_path / "control.log",
                      env=env, ready="control listening")
    control.stop()
    directory = data_home / "kakuremichi" / "control"
    assert mode(directory) == 0o700
    assert {p.name for p in directory.iterdir()} >= {"control.sqlite", "secrets.key", "web-session-secret"}
    assert all(mode(p) == 0o600 for p in directory.iterdir())


def test_the_help_names_the_platform_directory(data_home):
    env = dict(child_env(), XDG_DATA_HOME=str(data_home), COLUMNS="1000")
    for command in ("agent", "gateway", "control"):
        result = subprocess.run([sys.executable, "-m", "kakuremichi", command, "--help"], env=env,
                                capture_output=True, text=True, check=True)
        assert f"(default: {data_home}/kakuremichi/{command})" in " ".join(result.stdout.split())


def test_a_secret_file_that_cannot_be_restricted_is_warned_about(tmp_path, caplog, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no icacls here (as on a Windows without it)
    secret = tmp_path / "wireguard.key"
    secret.write_text("x")
    with caplog.at_level(logging.WARNING, "kakuremichi"):
        assert datadirs.owner_only_acl(secret) is False
    [record] = caplog.records
    assert "could not restrict this secret file to the current user" in record.message
    assert record.fields["path"] == str(secret)


def test_the_acl_grants_the_current_account_alone():
    command = datadirs.icacls_command(datadirs.Path("C:/k/wireguard.key"), "HOME\\ana")
    assert command[2:] == ["/inheritance:r", "/grant:r", "HOME\\ana:F"]  # inherited entries dropped, one grant
