"""A real OpenID Connect provider for the SSO tests: the npm package oidc-provider under Debian's nodejs,
installed with npm into a cache directory on first use."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

OIDC_PROVIDER = "oidc-provider@8"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "kakuremichi-tests" / "oidc-provider"


@pytest.fixture(scope="session")
def oidc_provider_modules() -> Path:
    """The directory holding node_modules/oidc-provider (npm install on first use)."""
    for tool in ("node", "npm"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not installed (apt-get install nodejs npm)")
    if not (CACHE / "node_modules" / "oidc-provider").is_dir():
        CACHE.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--prefix", str(CACHE), OIDC_PROVIDER],
                              capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            pytest.skip(f"npm install {OIDC_PROVIDER} failed: {done.stderr.strip()[-300:]}")
    return CACHE
