"""Certificates and keys on disk: one PEM per domain holding its private key and full chain.

Key and chain live in one file so that replacing it (write to a temporary file, then rename) swaps
both at once: a reader never sees a new chain with an old key. Files are 0600 and the directory
0700 because they hold private keys.

Layout under the state directory:
    certs/<domain>.pem                 private key + leaf + intermediates (wildcards as _wildcard.<parent>)
    acme/<directory-hash>.key.pem      ACME account key for one CA directory URL
"""

from __future__ import annotations

import datetime
import hashlib
import os
import secrets
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from kakuremichi.certpair import check_pair, names
from kakuremichi.datadirs import restrict_to_owner

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None
from kakuremichi.values import Domain

PRIVATE_MODE = 0o600


@dataclass(frozen=True)
class StoredCertificate:
    domain: str
    path: Path
    names: tuple[str, ...]
    not_before: datetime.datetime
    not_after: datetime.datetime
    serial: int
    issuer: str

    def renewal_due(self, fraction: float) -> datetime.datetime:
        """When `fraction` of the validity period has passed (2/3: renew with a third left)."""
        return self.not_before + (self.not_after - self.not_before) * fraction


@dataclass(frozen=True)
class CheckedPair:
    """A chain (leaf first) and key parsed once, known to belong together and to cover `domain`: what the
    store writes and the manager compares, without parsing the PEM again."""

    domain: str  # normalised
    chain: list[x509.Certificate]
    key: PrivateKeyTypes

    @classmethod
    def parse(cls, domain: str, chain_pem: bytes, key_pem: bytes) -> CheckedPair:
        """Raises CertificateError (or InvalidDomain) when the pair is unusable for `domain`."""
        domain = str(Domain.parse(domain))
        return cls(domain, *check_pair(domain, chain_pem, key_pem))

    @property
    def leaf(self) -> x509.Certificate:
        return self.chain[0]


def write_private(path: Path, data: bytes) -> None:
    """Atomically replace `path` with `data`, readable by the owner only from its first byte on."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_MODE)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        restrict_to_owner(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class CertStore:
    """The state directory's certificate half; safe to share between gateways on one host."""

    def __init__(self, directory: str | os.PathLike) -> None:
        self.root = Path(directory)
        for sub in (self.root, self.root / "certs", self.root / "acme"):
            sub.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(sub, 0o700)

    def path(self, domain: str) -> Path:
        return self.root / "certs" / (domain.replace("*", "_wildcard") + ".pem")

    def save(self, domain: str, chain_pem: bytes, key_pem: bytes) -> StoredCertificate:
        """Check that the pair is usable for `domain`, then store it atomically."""
        return self.keep(CheckedPair.parse(domain, chain_pem, key_pem))

    def keep(self, pair: CheckedPair) -> StoredCertificate:
        """Store an already checked pair atomically."""
        key_pem = pair.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                         serialization.NoEncryption())
        chain_text = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in pair.chain)
        path = self.path(pair.domain)
        write_private(path, key_pem + chain_text)
        return self._describe(pair.domain, path, pair.leaf)

    def load(self, domain: str) -> StoredCertificate | None:
        path = self.path(domain)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            leaf = x509.load_pem_x509_certificates(data)[0]
        except ValueError:
            return None
        return self._describe(domain, path, leaf)

    def _describe(self, domain: str, path: Path, leaf: x509.Certificate) -> StoredCertificate:
        return StoredCertificate(domain, path, names(leaf), leaf.not_valid_before_utc, leaf.not_valid_after_utc,
                                 leaf.serial_number, leaf.issuer.rfc4514_string())

    def read_pair(self, domain: str) -> tuple[bytes, bytes]:
        """(chain PEM, key PEM) of a stored certificate, e.g. to hand it to the other gateways."""
        data = self.path(domain).read_bytes()
        marker = b"-----BEGIN CERTIFICATE-----"
        split = data.index(marker)
        return data[split:], data[:split]

    def account_key(self, directory_url: str) -> bytes:
        """The PEM account key for a CA directory, made on first use (RSA 2048, what every CA takes)."""
        digest = hashlib.sha256(directory_url.encode()).hexdigest()[:16]
        path = self.root / "acme" / f"{digest}.key.pem"
        with self.locked():
            try:
                return path.read_bytes()
            except FileNotFoundError:
                pass
            key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
            write_private(path, pem)
            return pem

    @contextmanager
    def locked(self):
        """Hold the directory's lock: a gateway's worker processes share it, and each would otherwise make its own
        self-signed certificate or account key in the same moment and serve a different one (where the OS has
        no flock, the gateway runs one worker: workers.py)."""
        if fcntl is None:
            yield
            return
        fd = os.open(self.root / ".lock", os.O_WRONLY | os.O_CREAT, PRIVATE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock
