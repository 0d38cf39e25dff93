"""The daemon's own WireGuard private key on disk: made on first start, never sent anywhere.

Written 0600 in a 0700 directory (the parents it makes too; on Windows, with an ACL for the current user
only); a key file that others can read is refused, as ssh does, because whoever reads it can impersonate
this gateway or agent.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from kakuremichi.datadirs import private_files, restrict_to_owner
from kakuremichi.wg import keys


class KeyFileError(Exception):
    pass


def load_or_create(path: str | Path) -> bytes:
    """The private key stored at `path`, creating a new one there if the file does not exist."""
    path = Path(path)
    if path.exists():
        mode = path.stat().st_mode
        if os.name == "posix" and mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise KeyFileError(f"{path} is readable by other users (mode {stat.filemode(mode)}); "
                               f"run `chmod 600 {path}` and start again")
        try:
            return keys.decode(path.read_text(), f"private key in {path}")
        except keys.InvalidKey as exc:
            raise KeyFileError(f"{exc}; delete the file to generate a new key") from None
    with private_files():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    private = keys.generate_private()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(keys.encode(private) + "\n")
    restrict_to_owner(path)
    return private
