"""What a copy of control's data directory or database gives away: files 0600 in a 0700 directory, and TLS
private keys only sealed with the secrets key kept outside the database."""

from __future__ import annotations

import base64
import datetime
import logging
import os
import stat
import subprocess
import sys

import pytest
import trio
from pony.orm import db_session

from kakuremichi.control.datadir import SECRETS_KEY_FILE, SecretsKeyError
from kakuremichi.control.models import open_database
from kakuremichi.control.sealing import PREFIX, UnsealError
from kakuremichi.control.state import ControlState, Settings
from tests.control.conftest import ADMIN, connect, start_control
from tests.control.test_acme_websocket import DOMAIN, setup, upload
from tests.deployment import free_port
from tests.gateway.testca import TestCA


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_a_new_data_directory_is_private(tmp_path):
    data = tmp_path / "data"
    previous = os.umask(0o022)
    try:
        ControlState(Settings(data_dir=str(data), admin_token=ADMIN)).db.disconnect()
    finally:
        os.umask(previous)
    assert mode(data) == 0o700
    assert mode(data / "control.sqlite") == mode(data / SECRETS_KEY_FILE) == 0o600


def test_a_world_readable_data_directory_is_tightened_with_a_warning(tmp_path, caplog):
    data = tmp_path / "data"
    ControlState(Settings(data_dir=str(data), admin_token=ADMIN)).db.disconnect()
    os.chmod(data, 0o755)
    for name in ("control.sqlite", "control.sqlite-journal", SECRETS_KEY_FILE):
        (data / name).touch()
        os.chmod(data / name, 0o644)
    caplog.set_level(logging.WARNING)
    ControlState(Settings(data_dir=str(data), admin_token=ADMIN)).db.disconnect()
    assert mode(data) == 0o700
    assert mode(data / "control.sqlite") == mode(data / "control.sqlite-journal") == mode(data / SECRETS_KEY_FILE) \
        == 0o600
    assert caplog.text.count("was readable by other users; made private") == 4


@pytest.mark.both_databases
async def test_the_database_holds_no_private_key_and_gateways_still_get_it(nursery, settings):
    control = await start_control(nursery, settings)
    keys = await setup(control)
    certificate = upload(TestCA())
    async with connect(control, keys["gw1"], "gateway") as gw1, connect(control, keys["gw2"], "gateway") as gw2:
        await gw1.send(certificate)
        pushed = await gw2.receive()
        assert pushed.key_pem == certificate.key_pem
    key_body = certificate.key_pem.splitlines()[1]
    if settings.database_url is None:
        raw = (open(os.path.join(settings.data_dir, "control.sqlite"), "rb").read()
               + b"".join(open(p, "rb").read() for p in (os.path.join(settings.data_dir, "control.sqlite-wal"),)
                          if os.path.exists(p)))
        assert b"PRIVATE KEY" not in raw and key_body.encode() not in raw
    db = open_database(settings.database)
    with db_session:
        stored = db.Certificate[DOMAIN].key_pem
    db.disconnect()
    assert stored.startswith(PREFIX) and "PRIVATE KEY" not in stored and key_body not in stored
    await control.api.aclose()


@pytest.mark.both_databases
async def test_a_plaintext_key_is_sealed_at_start_and_a_wrong_secrets_key_is_refused(nursery, settings):
    control = await start_control(nursery, settings)
    keys = await setup(control)
    certificate = upload(TestCA())
    async with connect(control, keys["gw1"], "gateway") as gw1:
        await gw1.send(certificate)
    await control.api.aclose()
    db = open_database(settings.database)
    with trio.fail_after(5):
        while True:  # stored once control has handled the upload
            with db_session:
                if db.Certificate.get(domain=DOMAIN) is not None:
                    db.Certificate[DOMAIN].key_pem = certificate.key_pem  # as an older control kept it
                    break
            await trio.sleep(0.05)
    state = ControlState(settings)  # a second control on the same data: seals it at start
    with db_session:
        stored = db.Certificate[DOMAIN].key_pem
    assert stored.startswith(PREFIX)
    with db_session:
        assert state.sealer.unseal(DOMAIN, stored) == certificate.key_pem
    other = base64.urlsafe_b64encode(os.urandom(32)).decode()
    with pytest.raises(UnsealError, match="controls sharing a database must share that key"):
        ControlState(Settings(**{**settings.__dict__, "secrets_key": other, "secrets_key_source": "--x"}))
    with pytest.raises(SecretsKeyError, match="not 32 bytes"):
        ControlState(Settings(**{**settings.__dict__, "secrets_key": "short"}))
    db.disconnect()
    state.db.disconnect()


def test_the_cli_names_the_secrets_key_that_does_not_open_the_database(tmp_path):
    ControlState(Settings(data_dir=str(tmp_path), admin_token=ADMIN)).db.disconnect()
    db = open_database(f"sqlite:///{tmp_path}/control.sqlite")
    with db_session:
        db.Certificate(domain=DOMAIN, chain_pem="x", key_pem=PREFIX + base64.b64encode(os.urandom(40)).decode(),
                       serial="1", not_before=datetime.datetime(2030, 1, 1),
                       not_after=datetime.datetime(2030, 2, 1), issuer="x", uploaded_by="gw")
    db.disconnect()
    result = subprocess.run([sys.executable, "-m", "kakuremichi.control", "--data-dir", str(tmp_path),
                             "--listen", f"127.0.0.1:{free_port()}"], capture_output=True, text=True, timeout=30,
                            env={**os.environ, "KAKUREMICHI_ADMIN_TOKEN": ADMIN})
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"the TLS key of {DOMAIN} in the database does not open with the secrets key from " in result.stderr
    assert "KAKUREMICHI_SECRETS_KEY or --secrets-key-file" in result.stderr
