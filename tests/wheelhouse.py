"""The project's dependencies as wheels, so that what the tests install (the image build, a fresh venv running
the web UI's pip command) needs no index: built once from this machine's pip (its cache, or an index where
one is reached), then cached under ~/.cache/kakuremichi by pyproject.toml's text and the Python version."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

from tests.deployment import ROOT

CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "kakuremichi"


def wheelhouse() -> Path:
    """The directory of wheels: the dependencies and the build backend (setuptools, wheel), without
    kakuremichi itself, which each test installs from what it tests."""
    text = (ROOT / "pyproject.toml").read_bytes()
    key = hashlib.sha256(text + sys.version.encode()).hexdigest()[:12]
    house = CACHE / "wheelhouse" / key
    if not (house / ".complete").exists():
        shutil.rmtree(house, ignore_errors=True)
        project = tomllib.loads(text.decode())
        subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--wheel-dir", str(house),
                        *project["project"]["dependencies"], *project["build-system"]["requires"]],
                       check=True, capture_output=True, timeout=600)
        (house / ".complete").touch()
    return house
