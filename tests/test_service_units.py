"""The service files in packaging/: the systemd user unit passes `systemd-analyze verify` for each daemon, and
the launchd plist and the Windows task script set only variables and flags that `kakuremichi agent` has.
(launchd and Windows themselves are not available here: those two are not run.)"""

from __future__ import annotations

import os
import plistlib
import re
import shutil
import subprocess
import sys

import pytest

from kakuremichi.agent.cli import build_parser as agent_parser
from tests.deployment import ROOT

PACKAGING = ROOT / "packaging"


def agent_options() -> tuple[set[str], set[str]]:
    """The agent's flags and the KAKUREMICHI_* variables they read."""
    actions = [a for a in agent_parser("kakuremichi agent")._actions if a.option_strings]
    flags = {flag for action in actions for flag in action.option_strings}
    return flags, {"KAKUREMICHI_" + flag[2:].upper().replace("-", "_") for flag in flags if flag.startswith("--")}


@pytest.mark.parametrize("daemon", ["agent", "gateway", "control"])
def test_the_systemd_user_unit_verifies(tmp_path, daemon):
    if shutil.which("systemd-analyze") is None:
        pytest.skip("needs systemd-analyze (apt-get install systemd)")
    home, runtime = tmp_path / "home", tmp_path / "run"
    (home / ".local" / "bin").mkdir(parents=True)
    runtime.mkdir(mode=0o700)
    script = home / ".local" / "bin" / "kakuremichi"  # where pipx and `pip install --user` put it
    script.write_text(f"#!/bin/sh\nexec {sys.executable} -m kakuremichi \"$@\"\n")
    script.chmod(0o755)
    unit = tmp_path / f"kakuremichi@{daemon}.service"
    shutil.copy(PACKAGING / "systemd" / "kakuremichi@.service", unit)
    result = subprocess.run(["systemd-analyze", "--user", "verify", str(unit)], capture_output=True, text=True,
                            timeout=60, env=dict(os.environ, HOME=str(home), XDG_RUNTIME_DIR=str(runtime),
                                                 XDG_CONFIG_HOME=str(home / ".config")))
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr  # warnings would be printed
    subcommand = subprocess.run([str(script), daemon, "--help"], capture_output=True, text=True, timeout=60)
    assert subcommand.returncode == 0, subcommand.stderr  # ExecStart's command line exists


def test_the_launchd_plist_runs_the_agent_with_variables_it_reads():
    plist = plistlib.loads((PACKAGING / "launchd" / "net.kakuremichi.agent.plist").read_bytes())
    assert plist["ProgramArguments"][1:] == ["agent"] and plist["Label"] == "net.kakuremichi.agent"
    assert set(plist["EnvironmentVariables"]) <= agent_options()[1]
    assert plist["Umask"] == 0o077 and plist["KeepAlive"] == {"SuccessfulExit": False}


def test_the_windows_task_passes_flags_the_agent_has():
    script = (PACKAGING / "windows" / "install-agent-task.ps1").read_text()
    arguments = re.search(r'-Argument "agent (.*)"$', script, re.M)[1]
    assert set(re.findall(r"--[a-z-]+", arguments)) <= agent_options()[0]
