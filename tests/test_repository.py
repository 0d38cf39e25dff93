"""The repository's own files stay true to the commands: git ignores the data directories they make in the
current directory by default, and the README defines every shell variable its commands use."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest

from tests.deployment import ROOT
from tests.test_cli_help import all_parsers


def default_data_dirs() -> set[str]:
    """The defaults that are relative to the current directory (the others are the platform's user directory)."""
    return {action.default for parser in all_parsers() for action in parser._actions
            if "--data-dir" in action.option_strings and isinstance(action.default, str)  # None: makes none
            and not os.path.isabs(action.default)}


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git (apt-get install git)")
def test_git_ignores_the_default_data_directories():
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    directories = default_data_dirs()
    assert "kakuremichi-dev" in directories
    for directory in directories:
        result = subprocess.run(["git", "check-ignore", "-q", f"{directory}/admin-token"], cwd=ROOT)
        assert result.returncode == 0, f"{directory}/ is not in .gitignore"


def test_the_readme_sets_each_variable_before_using_it():
    blocks = re.findall(r"```sh\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    code = "\n".join(line for line in "\n".join(blocks).splitlines() if not line.lstrip().startswith("#"))
    for match in re.finditer(r"\$\{?([A-Z_][A-Z0-9_]*)", code):
        assert re.search(rf"^\s*(export\s+)?{match[1]}=", code[:match.start()], re.M), f"${match[1]} is never set"
