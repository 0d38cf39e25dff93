"""The namespace tests' helpers: a missing program skips a test, naming the Debian package to install."""

from __future__ import annotations

from tests.netns import needs


def test_a_missing_program_skips_naming_its_package(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    mark = needs("ping", "iputils-ping").mark
    assert mark.args == (True,) and mark.kwargs["reason"] == "needs ping (apt-get install iputils-ping)"
