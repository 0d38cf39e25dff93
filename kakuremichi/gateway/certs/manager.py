"""Keeps every HTTPS route's certificate present and fresh, and the SNI selector in step with it.

Per route TLS mode: `acme` certificates are ordered over HTTP-01 and renewed at 2/3 of their
lifetime, with exponential backoff (and jitter, so gateways don't hammer a CA in step) when the CA
fails; `custom` ones are installed by the user or control; `self-signed` ones are made locally.
With several gateways a `coordinator` (the daemon's link to control) decides which one orders, spreads
its challenges to the others and shares what it obtains; they `adopt()` it — all serve the same one.
"""

from __future__ import annotations

import datetime
import logging
import math
import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import trio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from kakuremichi.certpair import CertificateError, covers
from kakuremichi.gateway.certs.acme import AcmeClient, AcmeError, AcmeSettings
from kakuremichi.gateway.certs.challenges import Challenge, ChallengeStore
from kakuremichi.gateway.certs.selfsigned import make_self_signed
from kakuremichi.gateway.certs.store import CertStore, CheckedPair, StoredCertificate, write_private
from kakuremichi.gateway.certs.tls import CertificateSelector
from kakuremichi.gateway.routes import Route, TlsMode
from kakuremichi.logs import log

logger = logging.getLogger("kakuremichi.gateway.certs")
FALLBACK_NAME = "kakuremichi.invalid"


def utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


@dataclass(frozen=True)
class RenewalPolicy:
    fraction: float = 2 / 3  # renew once this much of the validity has passed
    retry_initial: float = 60.0  # seconds after a first failure; doubles per failure
    retry_max: float = 6 * 3600.0
    jitter: float = 0.1  # ± fraction of each retry delay


class LeaseHeld(Exception):
    """Another gateway is ordering this domain's certificate; ask again after `retry_in` seconds (its
    certificate will normally have arrived by then)."""

    def __init__(self, domain: str, holder: str, retry_in: float) -> None:
        super().__init__(f"{domain}: gateway {holder} orders this certificate for the next {retry_in:.0f}s")
        self.domain, self.holder, self.retry_in = domain, holder, retry_in


class Coordinator(Protocol):
    """How gateways order together (sync.py, through control)."""

    async def lease(self, domain: str) -> None:
        """Return once this gateway may order `domain` now; raise LeaseHeld or AcmeError otherwise."""

    async def publish(self, challenge: Challenge) -> None:
        """Return once the other gateways answer `challenge` too (or it is clear they never will)."""

    async def withdraw(self, challenge: Challenge) -> None: ...

    async def share(self, domain: str, chain_pem: bytes, key_pem: bytes, stored: StoredCertificate) -> None: ...


@dataclass
class DomainState:
    """What the manager knows about one ACME domain (exposed for status pages and tests)."""

    failures: int = 0
    retry_at: datetime.datetime | None = None
    last_error: str = ""
    history: list[float] = field(default_factory=list)  # retry delays chosen, newest last
    generation: int = 0  # bumped by reset(), so an attempt that began before leaves no outcome behind

    def reset(self) -> None:
        """Start afresh (a certificate arrived) in place: the object a running attempt holds stays the one
        the manager reads, and that attempt, seeing the new generation, records nothing into it."""
        self.failures, self.retry_at, self.last_error = 0, None, ""
        self.history.clear()
        self.generation += 1


class CertificateManager:
    """Owns the certificate side of the HTTPS listener: `context` is what it wraps connections with."""

    def __init__(self, store: CertStore, challenges: ChallengeStore, acme: AcmeSettings | None = None,
                 policy: RenewalPolicy | None = None, coordinator: Coordinator | None = None) -> None:
        self.store = store
        self.challenges = challenges
        self.acme = acme
        self.policy = policy or RenewalPolicy()
        self.selector = CertificateSelector(self._fallback())
        self.states: dict[str, DomainState] = {}
        self.coordinator = coordinator
        self._routes: dict[str, Route] = {}
        self._served: dict[str, StoredCertificate] = {}  # domain → the certificate SNI hands out
        self._client: AcmeClient | None = None
        self._lock = trio.Lock()
        self._wake = trio.Event()

    @property
    def context(self):
        return self.selector.context

    def _fallback(self) -> Path:
        path = self.store.root / "certs" / "_fallback.pem"
        with self.store.locked():
            if not path.exists():
                cert_pem, key_pem = make_self_signed(FALLBACK_NAME, days=3650)
                write_private(path, key_pem + cert_pem)
        return path

    def update_routes(self, routes: Iterable[Route]) -> None:
        """Follow a new route table: install what is on disk, make self-signed ones, schedule ACME."""
        self._routes = {r.domain: r for r in routes if r.tls is not TlsMode.OFF}
        for domain in set(self._served) - set(self._routes):
            self.selector.remove(domain)
            del self._served[domain]
        for domain, route in self._routes.items():
            if domain in self._served:
                continue
            stored = self._usable(domain)
            if stored is None and route.tls is TlsMode.SELF_SIGNED:
                with self.store.locked():  # another worker may be making it: all serve the first one made
                    stored = self._usable(domain) or self.store.save(domain, *make_self_signed(domain))
            if stored is not None:
                self._serve(stored)
            elif route.tls is TlsMode.CUSTOM:
                log(logger, logging.WARNING, "no certificate installed for custom-TLS route", domain=domain)
            elif route.tls is TlsMode.ACME and (self.acme is None or domain.startswith("*.")):
                log(logger, logging.WARNING, "route wants an ACME certificate this gateway cannot get "
                    "(no ACME directory configured, or a wildcard, which needs DNS-01)", domain=domain)
        self.states = {d: self.states.get(d, DomainState()) for d in self._acme_domains()}
        self._wake.set()

    def install(self, domain: str, chain_pem: bytes, key_pem: bytes) -> StoredCertificate:
        """Store and serve a certificate brought by the user or another gateway (raises CertificateError)."""
        return self._install(CheckedPair.parse(domain, chain_pem, key_pem))

    def adopt(self, domain: str, chain_pem: bytes, key_pem: bytes) -> StoredCertificate | None:
        """Install a certificate another gateway obtained, unless the one kept here is the same or a later one
        from the same CA (a self-signed or custom leftover is always replaced; the one kept is served if it was
        not). Raises CertificateError."""
        pair = CheckedPair.parse(domain, chain_pem, key_pem)  # the pushed PEM's only parse
        incoming = pair.leaf
        served = self._served.get(pair.domain)
        current = served or self.store.load(pair.domain)
        if current is not None and (incoming.serial_number == current.serial
                                    or (incoming.issuer.rfc4514_string() == current.issuer
                                        and incoming.not_valid_after_utc <= current.not_after)):
            # one another worker of this gateway stored in the shared directory is not served here yet
            return self._adopted(current) if served is None and pair.domain in self._routes else None
        return self._install(pair)

    def _install(self, pair: CheckedPair) -> StoredCertificate:
        return self._adopted(self.store.keep(pair))

    def _adopted(self, stored: StoredCertificate) -> StoredCertificate:
        """Serve a certificate now on disk, which ends any wait for it."""
        self._serve(stored)
        log(logger, logging.INFO, "certificate installed", domain=stored.domain, not_after=stored.not_after,
            issuer=stored.issuer)
        if stored.domain in self.states:  # a fresh certificate ends any wait for a lease or a retry
            self.states[stored.domain].reset()
        self._wake.set()  # a certificate from another gateway may postpone our own renewal
        return stored

    def _serve(self, stored: StoredCertificate) -> None:
        """Hand a stored certificate to SNI (building its SSLContext once, not on every config push)."""
        self.selector.install(stored.domain, stored.path)
        self._served[stored.domain] = stored

    def _usable(self, domain: str) -> StoredCertificate | None:
        stored = self.store.load(domain)
        if stored is None or stored.not_after <= utcnow() or not covers(stored.names, domain):
            return None
        return stored

    def _acme_domains(self) -> list[str]:
        if self.acme is None:
            return []
        return [d for d, r in self._routes.items() if r.tls is TlsMode.ACME and not d.startswith("*.")]

    def due(self, domain: str) -> datetime.datetime:
        """When `domain` needs an ACME attempt: now if it has no usable certificate, else at renewal time
        — or later, when the last attempt failed and its backoff has not run out."""
        state = self.states.get(domain) or DomainState()
        if state.retry_at is not None:
            return state.retry_at
        stored = self._usable(domain)
        return utcnow() if stored is None else stored.renewal_due(self.policy.fraction)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Issue and renew ACME certificates as they come due, one at a time, until cancelled."""
        task_status.started()
        while True:
            self._wake = trio.Event()
            pending = sorted((self.due(d), d) for d in self._acme_domains())
            if pending and pending[0][0] <= utcnow():
                await self._attempt(pending[0][1])
                continue
            wait = (pending[0][0] - utcnow()).total_seconds() if pending else math.inf
            with trio.move_on_after(wait):
                await self._wake.wait()

    async def _attempt(self, domain: str) -> None:
        state = self.states[domain]
        generation = state.generation
        try:
            await self.obtain(domain)
        except (LeaseHeld, AcmeError, CertificateError) as exc:
            if state.generation == generation:  # else a certificate arrived meanwhile: nothing to wait for
                self._failed(domain, state, exc)
        else:
            state.reset()

    def _failed(self, domain: str, state: DomainState, exc: Exception) -> None:
        """Schedule the next attempt after a refused lease (no failure) or a failed order (backoff)."""
        if isinstance(exc, LeaseHeld):
            delay = exc.retry_in * (1 + random.uniform(0, self.policy.jitter))
            state.retry_at = utcnow() + datetime.timedelta(seconds=delay)
            log(logger, logging.INFO, "another gateway orders this certificate; waiting for it", domain=domain,
                holder=exc.holder, ask_again_in_s=round(delay))
        else:
            state.failures += 1
            delay = min(self.policy.retry_max, self.policy.retry_initial * 2 ** (state.failures - 1))
            delay *= 1 + random.uniform(-self.policy.jitter, self.policy.jitter)
            state.retry_at = utcnow() + datetime.timedelta(seconds=delay)
            state.last_error = str(exc)
            state.history.append(delay)
            log(logger, logging.WARNING, "certificate request failed; will retry", domain=domain,
                attempt=state.failures, retry_in_s=round(delay, 1), error=str(exc))

    async def obtain(self, domain: str) -> StoredCertificate:
        """Order a certificate for `domain` now (also a forced renewal) with a fresh key, then serve it.
        With a coordinator, only while holding the domain's lease (else LeaseHeld)."""
        if self.acme is None:
            raise AcmeError("no ACME directory configured")
        async with self._lock:
            if self.coordinator is not None:
                await self.coordinator.lease(domain)
            key = ec.generate_private_key(ec.SECP256R1())
            key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption())
            if self._client is None:
                account_key = await trio.to_thread.run_sync(self.store.account_key, self.acme.directory_url)
                self._client = AcmeClient(self.acme, account_key)
            log(logger, logging.INFO, "requesting certificate", domain=domain, directory=self.acme.directory_url)

            def publish(token: str, key_authorization: str) -> None:
                trio.from_thread.run(self._publish, Challenge(domain, token, key_authorization))

            def withdraw(token: str) -> None:
                trio.from_thread.run(self._withdraw, token)

            chain_pem = await trio.to_thread.run_sync(self._client.issue, domain, key_pem, publish, withdraw,
                                                      abandon_on_cancel=True)
            stored = self.store.save(domain, chain_pem, key_pem)
            self._serve(stored)
        log(logger, logging.INFO, "certificate issued", domain=domain, not_after=stored.not_after,
            serial=format(stored.serial, "x"), issuer=stored.issuer)
        if self.coordinator is not None:
            await self.coordinator.share(domain, chain_pem, key_pem, stored)
        return stored

    async def _publish(self, challenge: Challenge) -> None:
        self.challenges.add(challenge)
        if self.coordinator is not None:
            await self.coordinator.publish(challenge)

    async def _withdraw(self, token: str) -> None:
        challenge = self.challenges.remove(token)
        if challenge is not None and self.coordinator is not None:
            await self.coordinator.withdraw(challenge)
