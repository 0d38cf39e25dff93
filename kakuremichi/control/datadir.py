"""Control's data directory and what it keeps on disk: 0700, its files 0600, and the secrets key.

The database holds TLS private keys and key hashes, so its directory and SQLite files are readable by the
service's user only; one that is readable by others at start is tightened, with a warning. The secrets key
encrypts the TLS private keys in the database (see sealing.py); it never goes into the database itself.
"""

from __future__ import annotations

import base64
import binascii
import os
import secrets
from pathlib import Path

from kakuremichi.datadirs import prepare, private_files, restrict_to_owner, tighten  # noqa: F401 (used by models, state)

SECRETS_KEY_FILE = "secrets.key"
SQLITE_COMPANIONS = ("", "-wal", "-shm", "-journal")


class SecretsKeyError(ValueError):
    """The secrets key given or found is not usable: says which flag, variable or file, and what to do."""


def tighten_sqlite(database: str | os.PathLike) -> None:
    """The SQLite database and its journal files (which SQLite creates with the database's own mode): 0600."""
    for suffix in SQLITE_COMPANIONS:
        tighten(Path(f"{database}{suffix}"), 0o600)


def secrets_key(data_dir: Path, value: str | None, source: str) -> tuple[bytes, str]:
    """The 32-byte key that encrypts TLS private keys, and where it came from (for error messages).

    `value` is what --secrets-key/--secrets-key-file/KAKUREMICHI_SECRETS_KEY gave (named by `source`); without
    it, `secrets.key` in the data directory, made on first start."""
    if value is None:
        path = data_dir / SECRETS_KEY_FILE
        source = f"{path} (or set KAKUREMICHI_SECRETS_KEY / --secrets-key-file)"
        if not path.exists():
            create_secret_file(path, base64.urlsafe_b64encode(secrets.token_bytes(32)).decode() + "\n")
        tighten(path, 0o600)
        value = path.read_text()
    try:
        key = base64.urlsafe_b64decode(value.strip().encode())
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != 32:
        raise SecretsKeyError(f"the secrets key from {source} is not 32 bytes in base64url; make one with "
                              "`python -c 'import base64,os; print(base64.urlsafe_b64encode(os.urandom(32)).decode())'`")
    return key, source


def create_secret_file(path: Path, text: str) -> None:
    """`text` in a new 0600 file at `path` (its directory made 0700), unless one is there already. Written whole
    under another name, then linked into place: another control starting on the same directory either wins
    the link or reads a complete file, never an empty one."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(text)
    restrict_to_owner(temporary)
    try:
        os.link(temporary, path)
    except FileExistsError:
        pass
    finally:
        temporary.unlink()
