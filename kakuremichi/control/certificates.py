"""ACME across several gateways: who may order a domain's certificate, the HTTP-01 challenges every gateway
must answer, and the certificates they all serve.

The CA validates through whichever gateway the domain's DNS sends it to, so a challenge published by the
ordering gateway is handed to all the others; the certificate it obtains is kept here and pushed to every
gateway, so they serve the same one and a gateway started later never orders its own. Only one gateway at a
time orders a domain: the holder of its lease, which lasts `duration` seconds and passes to another gateway
at once when the holder goes offline. Everything lives in the database, so controls sharing PostgreSQL agree.

Call inside a db_session; every function takes `now` (naive UTC) so tests drive the clock.
"""

from __future__ import annotations

import datetime
import functools
import math
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID
from pony.orm import Database

from kakuremichi import protocol
from kakuremichi.certpair import CertificateError, check_pair, names
from kakuremichi.control.sealing import Sealer

CHALLENGE_TTL = datetime.timedelta(minutes=10)  # a forgotten challenge (its gateway died mid-order) goes away


@dataclass(frozen=True)
class LeaseDecision:
    """Granted to the requester, or not: `holder` alone may order until `expires_at`."""

    granted: bool
    holder: str  # gateway name
    expires_at: datetime.datetime


@dataclass(frozen=True)
class NotServed:
    """The lease is refused outright: the requester does not serve the domain with ACME, so nobody holds it
    for the requester to wait for (on the wire: not granted, no holder)."""

    domain: str


def served_domains(db: Database, gateway_id: str) -> set[str]:
    """The ACME domains routed to this gateway: the only ones it may lease, publish or upload for."""
    gateway = db.Gateway.get(id=gateway_id)
    if gateway is None:
        return set()
    return {row.tunnel.domain for row in gateway.tunnel_ips if row.tunnel.tls_mode == "acme"}


def request_lease(db: Database, gateway_id: str, domain: str, now: datetime.datetime,
                  duration: float) -> LeaseDecision | NotServed:
    """Grant (or extend) the lease on `domain` unless another gateway holds it, is online and it has not
    expired; a refusal names the holder and when its lease ends. A domain the requester does not serve (any
    more: checked in the same transaction) is NotServed."""
    if domain not in served_domains(db, gateway_id):
        return NotServed(domain)
    requester = db.Gateway[gateway_id]
    lease = db.AcmeLease.get(domain=domain)
    if lease is not None and lease.gateway != requester and lease.expires_at > now \
            and lease.gateway.status == "online":
        return LeaseDecision(False, lease.gateway.name, lease.expires_at)
    expires_at = now + datetime.timedelta(seconds=duration)
    if lease is None:
        db.AcmeLease(domain=domain, gateway=requester, expires_at=expires_at)
    else:
        lease.set(gateway=requester, expires_at=expires_at)
    return LeaseDecision(True, requester.name, expires_at)


def publish_challenge(db: Database, gateway_id: str, challenge: protocol.AcmeChallenge,
                      now: datetime.datetime) -> None:
    for stale in db.AcmeChallenge.select(lambda c: c.expires_at <= now):
        stale.delete()
    row = db.AcmeChallenge.get(token=challenge.token)
    values = {"domain": challenge.domain, "key_authorization": challenge.key_authorization,
              "gateway": db.Gateway[gateway_id], "expires_at": now + CHALLENGE_TTL}
    if row is None:
        db.AcmeChallenge(token=challenge.token, **values)
    else:
        row.set(**values)


def withdraw_challenge(db: Database, gateway_id: str, token: str) -> bool:
    """Forget a challenge its own gateway withdrew; False if there was none of that gateway's."""
    row = db.AcmeChallenge.get(token=token)
    if row is None or row.gateway.id != gateway_id:
        return False
    row.delete()
    return True


def record_acks(db: Database, gateway_id: str, tokens: list[str]) -> None:
    """The challenges this gateway now answers (replacing what it confirmed before)."""
    row = db.AcmeAck.get(gateway=gateway_id)
    if row is None:
        db.AcmeAck(gateway=gateway_id, tokens=sorted(tokens))
    else:
        row.tokens = sorted(tokens)


def forget_acks(db: Database, gateway_id: str) -> None:
    """A gateway (re)connected: it answers nothing until it confirms again."""
    row = db.AcmeAck.get(gateway=gateway_id)
    if row is not None:
        row.delete()


def unconfirmed(db: Database, challenge: protocol.AcmeChallenge, publisher_id: str) -> list[str]:
    """Names of the online gateways, other than the publisher, that serve the challenge's domain and have not
    confirmed they answer it — whichever control instance they are connected to."""
    tunnel = db.Tunnel.get(domain=challenge.domain)
    gateways = [] if tunnel is None else [row.gateway for row in tunnel.gateway_ips]
    return sorted(g.name for g in gateways if g.id != publisher_id and g.status == "online"
                  and challenge.token not in ((g.acme_ack and g.acme_ack.tokens) or []))


def challenges_for(db: Database, gateway_id: str, domains: set[str],
                   now: datetime.datetime) -> list[protocol.AcmeChallenge]:
    """What this gateway must answer for the others: live challenges for its `served_domains`, sorted."""
    rows = db.AcmeChallenge.select(lambda c: c.gateway.id != gateway_id and c.expires_at > now)
    return sorted((protocol.AcmeChallenge(c.domain, c.token, c.key_authorization) for c in rows
                   if c.domain in domains), key=lambda c: c.token)


def store_certificate(db: Database, sealer: Sealer, gateway_name: str, upload: protocol.CertificateUpload,
                      now: datetime.datetime) -> str | None:
    """Keep an uploaded certificate if it is valid, covers its domain and expires later than the one kept so
    far (an old upload arriving late never replaces a renewal): its serial, or None when the kept one stays.
    Raises CertificateError when it is unusable."""
    chain, _ = check_pair(upload.domain, upload.chain_pem.encode(), upload.key_pem.encode())
    leaf = chain[0]
    not_after = leaf.not_valid_after_utc.replace(tzinfo=None)
    if not_after <= now:
        raise CertificateError(f"{upload.domain}: the certificate expired at {not_after.isoformat()}Z")
    row = db.Certificate.get(domain=upload.domain)
    if row is not None and row.not_after >= not_after:
        return None
    serial = format(leaf.serial_number, "x")
    values = {"chain_pem": upload.chain_pem, "key_pem": sealer.seal(upload.domain, upload.key_pem), "serial": serial,
              "not_before": leaf.not_valid_before_utc.replace(tzinfo=None), "not_after": not_after,
              "issuer": leaf.issuer.rfc4514_string(), "uploaded_by": gateway_name, "updated_at": now}
    if row is None:
        db.Certificate(domain=upload.domain, **values)
    else:
        row.set(**values)
    return serial


def forget(db: Database, domain: str) -> None:
    """Its tunnel is gone (or renamed): drop the domain's certificate and key, lease and challenges."""
    for entity in (db.Certificate, db.AcmeLease):
        row = entity.get(domain=domain)
        if row is not None:
            row.delete()
    for challenge in db.AcmeChallenge.select(lambda c: c.domain == domain):
        challenge.delete()


def certificate_serials(db: Database, domains: set[str]) -> dict[str, str]:
    """domain → serial of the stored certificates for a gateway's `served_domains` (PEMs are lazy: not loaded)."""
    return {c.domain: c.serial for c in db.Certificate.select() if c.domain in domains}


def certificate(db: Database, sealer: Sealer, domain: str) -> protocol.CertificateInstall:
    """The stored certificate with its key opened (UnsealError if this control's secrets key does not open it)."""
    row = db.Certificate[domain]
    return protocol.CertificateInstall(row.domain, row.chain_pem, sealer.unseal(row.domain, row.key_pem),
                                       row.not_after.replace(tzinfo=datetime.timezone.utc))


@dataclass(frozen=True)
class Summary:
    """What the admin may see of a stored certificate (never its key), and who may renew it until when."""

    issuer: str
    not_before: datetime.datetime
    not_after: datetime.datetime
    fingerprint_sha256: str  # "AB:CD:…", as browsers show it
    domains: tuple[str, ...]
    lease: LeaseDecision | None  # the live lease on the domain, if any

    def days_left(self, now: datetime.datetime) -> int:
        """Whole days until it expires: 0 on its last day, negative once expired."""
        return math.floor((self.not_after - now) / datetime.timedelta(days=1))


def summary(db: Database, domain: str, now: datetime.datetime) -> Summary | None:
    """The stored certificate of `domain` described from its leaf; None when none is stored."""
    row = db.Certificate.get(domain=domain)
    if row is None:
        return None
    lease = db.AcmeLease.get(domain=domain)
    live = lease is not None and lease.expires_at > now
    return Summary(*_described(row.chain_pem),
                   LeaseDecision(True, lease.gateway.name, lease.expires_at) if live else None)


@functools.lru_cache(maxsize=4096)
def _described(chain_pem: str) -> tuple[str, datetime.datetime, datetime.datetime, str, tuple[str, ...]]:
    """Issuer, validity, fingerprint and names of a chain's leaf: parsed once per certificate, not per listing."""
    leaf = x509.load_pem_x509_certificates(chain_pem.encode())[0]
    return (_issuer(leaf.issuer), leaf.not_valid_before_utc.replace(tzinfo=None),
            leaf.not_valid_after_utc.replace(tzinfo=None), leaf.fingerprint(hashes.SHA256()).hex(":").upper(),
            names(leaf))


def _issuer(name: x509.Name) -> str:
    """The issuer's common name and organisation, as in "R11 (Let's Encrypt)", or whichever it has."""
    common, organisation = (next((a.value for a in name.get_attributes_for_oid(oid)), None)
                            for oid in (NameOID.COMMON_NAME, NameOID.ORGANIZATION_NAME))
    if common and organisation:
        return f"{common} ({organisation})"
    return common or organisation or name.rfc4514_string()
