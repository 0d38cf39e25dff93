import os
import stat

import pytest

from kakuremichi.wg import keyfile, keys


def test_creates_a_private_key_readable_only_by_its_owner(tmp_path):
    path = tmp_path / "state" / "wireguard.key"
    first = keyfile.load_or_create(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert keyfile.load_or_create(path) == first  # stable across restarts
    assert keys.decode(path.read_text()) == first


def test_refuses_a_key_others_can_read(tmp_path):
    path = tmp_path / "wireguard.key"
    keyfile.load_or_create(path)
    os.chmod(path, 0o644)
    with pytest.raises(keyfile.KeyFileError, match="chmod 600"):
        keyfile.load_or_create(path)


def test_reports_a_corrupt_key_file(tmp_path):
    path = tmp_path / "wireguard.key"
    path.write_text("garbage")
    os.chmod(path, 0o600)
    with pytest.raises(keyfile.KeyFileError, match="delete the file"):
        keyfile.load_or_create(path)
