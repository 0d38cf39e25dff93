"""A throwaway OpenSSH server on a loopback port, for tests and benchmarks that need a real one: its own host
key, one authorised client key, and a /run/sshd of its own (sshd insists on it for privilege separation) in a
private mount namespace, so nothing of the machine's is touched. Needs root, sshd, ssh-keygen and unshare."""

from __future__ import annotations

import contextlib
import getpass
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.deployment import free_port, wait_for


@dataclass
class Sshd:
    port: int
    client_key: Path  # the private key it accepts
    process: subprocess.Popen
    user: str

    def options(self) -> list[str]:
        """ssh/scp options that log in with the client key, trusting the throwaway host key."""
        return ["-F", "/dev/null", "-i", str(self.client_key), "-o", "StrictHostKeyChecking=no",
                "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes", "-o", "LogLevel=ERROR"]


@contextlib.contextmanager
def throwaway_sshd(tmp: Path) -> Iterator[Sshd]:
    tmp.mkdir(parents=True)
    for key in ("host", "client"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp / key)], check=True)
    shutil.copy(tmp / "client.pub", tmp / "authorized_keys")
    port = free_port()
    (tmp / "sshd_config").write_text(
        f"ListenAddress 127.0.0.1\nPort {port}\nHostKey {tmp / 'host'}\n"
        f"AuthorizedKeysFile {tmp / 'authorized_keys'}\nPidFile {tmp / 'sshd.pid'}\nStrictModes no\n"
        "UsePAM no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        "PermitRootLogin prohibit-password\nAllowTcpForwarding yes\nSubsystem sftp internal-sftp\n")
    (tmp / "run").mkdir(mode=0o700)
    with open(tmp / "sshd.log", "w") as log:
        sshd = subprocess.Popen(
            ["unshare", "--mount", "sh", "-c", 'mount --bind "$0" /run && mkdir /run/sshd && exec "$@"',
             str(tmp / "run"), shutil.which("sshd"), "-D", "-e", "-f", str(tmp / "sshd_config")],
            stdout=subprocess.DEVNULL, stderr=log)
    try:
        wait_for(lambda: b"Server listening" in (tmp / "sshd.log").read_bytes() or sshd.poll() is not None,
                 10, "sshd to listen")
        assert sshd.poll() is None, f"sshd exited; see {tmp / 'sshd.log'}"
        yield Sshd(port, tmp / "client", sshd, getpass.getuser())
    finally:
        sshd.terminate()
        try:
            sshd.wait(5)
        except subprocess.TimeoutExpired:
            sshd.kill()
            sshd.wait()
