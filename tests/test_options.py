"""Secrets on the command line show in `ps`: daemons take them from a file or KAKUREMICHI_*, and warn otherwise."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from kakuremichi.agent.cli import build_parser as agent_parser
from kakuremichi.control.cli import parser as control_parser
from kakuremichi.gateway.cli import build_parser as gateway_parser

KEY = "agt_" + "k" * 43
URL = ["--control-url", "ws://127.0.0.1:9/ws"]


def test_the_api_key_comes_from_a_file_or_the_environment(tmp_path, monkeypatch, capsys):
    (tmp_path / "key").write_text(KEY + "\n")
    args = agent_parser("agent").parse_args([*URL, "--api-key-file", str(tmp_path / "key")])
    assert args.api_key == KEY and args.api_key_source == f"--api-key-file {tmp_path / 'key'}"
    monkeypatch.setenv("KAKUREMICHI_API_KEY", KEY)
    assert agent_parser("agent").parse_args(URL).api_key == KEY
    monkeypatch.delenv("KAKUREMICHI_API_KEY")
    monkeypatch.setenv("KAKUREMICHI_API_KEY_FILE", str(tmp_path / "key"))
    assert gateway_parser("gateway").parse_args([*URL, "--public-host", "gw"]).api_key == KEY
    assert capsys.readouterr().err == ""  # none of these is warned about


def test_a_key_on_the_command_line_still_works_with_a_warning(capsys):
    assert agent_parser("agent").parse_args([*URL, f"--api-key={KEY}"]).api_key == KEY
    assert capsys.readouterr().err == ("agent: warning: --api-key on the command line is visible to every user of "
                                       "this machine (ps, /proc); use KAKUREMICHI_API_KEY or --api-key-file\n")
    control_parser("control").parse_args(["--admin-token", "kma_x"])
    assert "--admin-token on the command line is visible" in capsys.readouterr().err


@pytest.mark.parametrize("argv, error", [
    ([], "KAKUREMICHI_API_KEY, --api-key-file or --api-key is required"),
    (["--api-key-file", "/nonexistent/key"], "--api-key-file: cannot read /nonexistent/key: No such file"),
    (["--api-key-file", os.devnull], f"--api-key-file: {os.devnull} is empty"),
])
def test_a_missing_or_unreadable_key_is_a_usage_error(argv, error, capsys):
    with pytest.raises(SystemExit) as exited:
        agent_parser("agent").parse_args([*URL, *argv])
    assert exited.value.code == 2 and error in capsys.readouterr().err


def test_a_running_agent_shows_no_key_in_its_command_line(tmp_path):
    (tmp_path / "key").write_text(KEY)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    agent = subprocess.Popen([sys.executable, "-m", "kakuremichi.agent", *URL, "--api-key-file",
                              str(tmp_path / "key"), "--data-dir", str(tmp_path / "data")],
                             stderr=subprocess.PIPE, text=True, env=env)
    try:
        seen = ""
        while "cannot connect to control" not in seen:  # it runs with the key read
            line = agent.stderr.readline()
            assert line, f"the agent ended early: {seen}"
            seen += line
        assert KEY.encode() not in Path(f"/proc/{agent.pid}/cmdline").read_bytes()
        assert "warning" not in seen
    finally:
        agent.kill()
        agent.wait()
