"""Where the daemons keep their state, and keeping it the owner's alone on every platform.

Without --data-dir each daemon uses its own directory under the user's data directory of the platform
(platformdirs: `$XDG_DATA_HOME/kakuremichi/agent` or `~/.local/share/...` on Linux, `~/Library/Application
Support/kakuremichi/...` on macOS, `%LOCALAPPDATA%\\kakuremichi\\...` on Windows), so a service started from
another working directory finds its key instead of making a new one. Directories are 0700 and files 0600 on
POSIX; on Windows, where modes mean nothing, key and secret files get an ACL for the current user only
(icacls), or a warning saying they could not.
"""

from __future__ import annotations

import getpass
import logging
import os
import stat
import subprocess
from contextlib import contextmanager
from pathlib import Path

import platformdirs

from kakuremichi.logs import log

logger = logging.getLogger("kakuremichi")
APP = "kakuremichi"


def default(component: str) -> str:
    """The data directory of `component` ("agent", "gateway", "control") when --data-dir is not given."""
    return str(Path(platformdirs.user_data_dir(APP, appauthor=False, roaming=False)) / component)


@contextmanager
def private_files():
    """Whatever is created meanwhile (directories, the SQLite database) is the owner's alone."""
    previous = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(previous)


def prepare(directory: str | os.PathLike) -> Path:
    """The data directory, created 0700 (with any parent it needs), or tightened to it (with a warning) if
    others may enter it."""
    path = Path(directory).absolute()
    with private_files():
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
    tighten(path, 0o700)
    return path


def tighten(path: Path, mode: int) -> None:
    """Take away every permission of group and others from an existing `path`, saying so."""
    try:
        current = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        return
    if os.name == "posix" and current & 0o077:
        os.chmod(path, current & mode)
        log(logger, logging.WARNING, "was readable by other users; made private", path=str(path),
            was=stat.filemode(current), now=stat.filemode(stat.S_IMODE(path.stat().st_mode)))


def restrict_to_owner(path: Path) -> None:
    """On Windows, give a new key or secret file an ACL for the current user only (its 0600 mode is not
    enforced there: it would inherit its directory's ACL). Nothing to do elsewhere."""
    if os.name == "nt":
        owner_only_acl(path)


def owner_only_acl(path: Path) -> bool:
    """Replace `path`'s ACL with full control for the current user alone (`icacls /inheritance:r /grant:r`);
    if icacls is missing or refuses, warn that the file may be readable by others, and return False."""
    try:
        subprocess.run(icacls_command(path, current_account()), check=True, capture_output=True, timeout=30)
        return True
    except (OSError, subprocess.SubprocessError) as exc:
        log(logger, logging.WARNING, "could not restrict this secret file to the current user; other users of "
            "this machine may be able to read it: put the data directory (--data-dir) in your own profile",
            path=str(path), error=str(exc))
        return False


def icacls_command(path: Path, account: str) -> list[str]:
    """icacls arguments that drop inherited entries and grant `account` full control, nobody else anything."""
    return ["icacls", str(path), "/inheritance:r", "/grant:r", f"{account}:F"]


def current_account() -> str:
    """DOMAIN\\user on Windows (USERDOMAIN), the login name elsewhere."""
    domain = os.environ.get("USERDOMAIN")
    return f"{domain}\\{getpass.getuser()}" if domain else getpass.getuser()
