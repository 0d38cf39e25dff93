"""`kakuremichi control` refuses a database it cannot use with one line saying why, not a traceback."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from pony.orm import db_session

from kakuremichi.control.models import open_database
from tests.control.conftest import free_port


def run_control(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    return subprocess.run([sys.executable, "-m", "kakuremichi.control", "--listen", f"127.0.0.1:{free_port()}",
                           *args], env=env, capture_output=True, text=True, timeout=30)


def test_a_database_of_a_newer_control_is_refused(tmp_path):
    db = open_database(f"sqlite:///{tmp_path}/control.sqlite")
    with db_session:
        db.Setting["schema_version"].value = "99"
    db.disconnect()
    result = run_control("--data-dir", str(tmp_path))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "database schema version 99 is not supported" in result.stderr.splitlines()[-1]


def test_an_unreachable_or_unsupported_database_is_refused(tmp_path):
    pytest.importorskip("psycopg2")
    result = run_control("--data-dir", str(tmp_path), "--database-url", f"postgres://nobody@127.0.0.1:{free_port()}/x")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert ": database: connection to server at \"127.0.0.1\"" in result.stderr
    result = run_control("--data-dir", str(tmp_path), "--database-url", "mysql://nobody@127.0.0.1/x")
    assert result.returncode == 1
    assert result.stderr.endswith(": unsupported database URL scheme 'mysql': use sqlite:///path or postgres://\n")


def test_postgres_without_psycopg2_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "psycopg2", None)
    with pytest.raises(ValueError, match=r"pip install 'kakuremichi\[postgres\]'"):
        open_database("postgres://nobody@127.0.0.1:1/x")


def test_a_listen_address_out_of_range_is_refused_before_starting(capsys):
    from kakuremichi.control.cli import main

    with pytest.raises(SystemExit) as exited:
        main(["--listen", "127.0.0.1:99999"])
    assert exited.value.code == 2
    assert "the port '99999' is not a number from 1 to 65535 (like 127.0.0.1:8000)" in capsys.readouterr().err


def test_unusable_oidc_providers_are_refused_with_what_to_fix(tmp_path):
    providers = tmp_path / "oidc.json"
    cases = [
        ("[]", [], "must be a JSON list of providers"),
        ('[{"name": "corp", "issuer": "https://id.example.com", "clientId": "k"}]', ["--public-url", "https://c"],
         "provider 0: give the client secret as clientSecretFile or clientSecretEnv"),
        ('[{"name": "corp", "issuer": "https://id.example.com", "clientId": "k", "clientSecretEnv": "NO_SUCH_VAR_X"}]',
         ["--public-url", "https://c"], "the environment variable NO_SUCH_VAR_X is empty or unset"),
        ('[{"name": "corp", "issuer": "https://id.example.com", "clientId": "k", "clientSecretFile": "/etc/hostname"}]',
         [], "--oidc-providers-file needs --public-url"),
    ]
    for text, extra, message in cases:
        providers.write_text(text)
        result = run_control("--data-dir", str(tmp_path / "data"), "--oidc-providers-file", str(providers), *extra)
        assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
        assert message in result.stderr, result.stderr
