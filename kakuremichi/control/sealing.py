"""TLS private keys encrypted at rest: a dump of control's database alone leaks no key.

AES-256-GCM with the secrets key (kept outside the database, see datadir.py), a random nonce per key and the
certificate's domain as associated data, so a sealed key moved to another domain's row does not open.
"""

from __future__ import annotations

import base64
import logging
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pony.orm import Database

from kakuremichi.logs import log

logger = logging.getLogger("kakuremichi.control")
PREFIX = "aesgcm1:"  # what a sealed key_pem starts with; a PEM (written before sealing) starts with -----BEGIN


class UnsealError(ValueError):
    """A stored TLS key does not open with this control's secrets key."""


class Sealer:
    def __init__(self, key: bytes, source: str) -> None:
        self._aead = AESGCM(key)
        self.source = source  # where the key came from, for the error that names what to fix

    def seal(self, domain: str, key_pem: str) -> str:
        nonce = os.urandom(12)
        sealed = self._aead.encrypt(nonce, key_pem.encode(), domain.encode())
        return PREFIX + base64.b64encode(nonce + sealed).decode()

    def unseal(self, domain: str, stored: str) -> str:
        """The PEM of a stored key (a plaintext one, written by an older control, is returned as it is)."""
        if not stored.startswith(PREFIX):
            return stored
        try:
            raw = base64.b64decode(stored[len(PREFIX):], validate=True)
            return self._aead.decrypt(raw[:12], raw[12:], domain.encode()).decode()
        except (InvalidTag, ValueError) as exc:
            raise UnsealError(f"the TLS key of {domain} in the database does not open with the secrets key from "
                              f"{self.source}: controls sharing a database must share that key (copy the first "
                              "control's secrets.key, or give them all the same KAKUREMICHI_SECRETS_KEY or "
                              "--secrets-key-file)") from exc


def seal_stored_keys(db: Database, sealer: Sealer) -> None:
    """At start, as a write (`models.write`, in turn with the controls starting at once): encrypt the keys stored
    in plaintext (by an older control), and check that every sealed one opens, so a control with the wrong
    secrets key stops at once instead of failing at its first push."""
    sealed = 0
    for row in db.Certificate.select():
        if row.key_pem.startswith(PREFIX):
            sealer.unseal(row.domain, row.key_pem)
        else:
            row.key_pem = sealer.seal(row.domain, row.key_pem)
            sealed += 1
    if sealed:
        log(logger, logging.INFO, "encrypted the TLS keys stored in plaintext", count=sealed)
