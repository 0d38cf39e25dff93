"""The gateway's half of ordering certificates together with the other gateways, through control.

Towards control it is the CertificateManager's coordinator: a lease before ordering, each challenge
published with the order held until control confirms every other gateway answers it, the certificate
uploaded once obtained. From control it takes the challenges other gateways published (answered here
too) and the certificates they obtained (installed here). See docs/control-protocol.md, "Certificates".
"""

from __future__ import annotations

import logging

import trio

from kakuremichi import protocol
from kakuremichi.certpair import CertificateError
from kakuremichi.controlclient import ControlClient, NotConnected
from kakuremichi.gateway.certs.acme import AcmeError
from kakuremichi.gateway.certs.challenges import Challenge, ChallengeStore
from kakuremichi.gateway.certs.manager import CertificateManager, LeaseHeld
from kakuremichi.gateway.certs.store import StoredCertificate
from kakuremichi.logs import log

logger = logging.getLogger("kakuremichi.gateway.certsync")
ANSWER_TIMEOUT = 15.0  # for control's lease answer and challenge confirmation (control itself waits 10 s)


class _Reply:
    """One awaited answer from control."""

    def __init__(self) -> None:
        self.event = trio.Event()
        self.message: protocol.Message | None = None

    def set(self, message: protocol.Message) -> None:
        self.message = message
        self.event.set()

    async def wait(self) -> protocol.Message | None:
        with trio.move_on_after(ANSWER_TIMEOUT):
            await self.event.wait()
        return self.message


class CertificateSync:
    def __init__(self, certs: CertificateManager, challenges: ChallengeStore, client: ControlClient) -> None:
        self.certs, self.challenges, self.client = certs, challenges, client
        self._leases: dict[str, _Reply] = {}  # domain → awaited acme_lease
        self._confirmations: dict[str, _Reply] = {}  # token → awaited acme_challenge_ready
        self._unshared: dict[str, protocol.CertificateUpload] = {}  # obtained while control was away

    # -- coordinator of the CertificateManager -------------------------------------------------------------

    async def lease(self, domain: str) -> None:
        reply = self._leases[domain] = _Reply()
        try:
            await self.client.send(protocol.LeaseRequest(domain))
            lease = await reply.wait()
        except NotConnected as exc:
            raise AcmeError(f"{domain}: control is unreachable ({exc}); gateways only order with its lease") from None
        finally:
            self._leases.pop(domain, None)
        if lease is None:
            raise AcmeError(f"{domain}: control did not answer the lease request in {ANSWER_TIMEOUT:.0f}s")
        if not lease.granted and not lease.holder:  # control's NotServed: no route of ours needs it (yet)
            raise AcmeError(f"{domain}: control grants no lease: this gateway does not serve it with ACME")
        if not lease.granted:
            raise LeaseHeld(domain, lease.holder, lease.expires_in)

    async def publish(self, challenge: Challenge) -> None:
        reply = self._confirmations[challenge.token] = _Reply()
        try:
            await self.client.send(protocol.ChallengePublished(challenge))
            confirmed = await reply.wait()
        except NotConnected:
            confirmed = None
        finally:
            self._confirmations.pop(challenge.token, None)
        if confirmed is None:
            log(logger, logging.WARNING, "control did not confirm that the other gateways answer the challenge; "
                "validation may fail through them", domain=challenge.domain)

    async def withdraw(self, challenge: Challenge) -> None:
        try:
            await self.client.send(protocol.ChallengeWithdrawn(challenge.domain, challenge.token))
        except NotConnected:
            pass  # control forgets challenges on its own after a while

    async def share(self, domain: str, chain_pem: bytes, key_pem: bytes, stored: StoredCertificate) -> None:
        self._unshared[domain] = protocol.CertificateUpload(domain, chain_pem.decode("ascii"),
                                                            key_pem.decode("ascii"), stored.not_after)
        await self._upload()

    async def _upload(self) -> None:
        for domain, upload in list(self._unshared.items()):
            try:
                await self.client.send(upload)
            except NotConnected:
                return  # again after reconnecting
            if self._unshared.get(domain) is upload:
                del self._unshared[domain]
            log(logger, logging.INFO, "certificate shared with the other gateways", domain=domain)

    # -- ControlClient callbacks ---------------------------------------------------------------------------

    async def connected(self) -> None:
        """A new session: control may have missed what happened meanwhile."""
        try:
            for challenge in self.challenges.own():
                await self.client.send(protocol.ChallengePublished(challenge))
        except NotConnected:
            return
        await self._upload()

    async def receive(self, message: protocol.Message) -> None:
        if isinstance(message, protocol.Lease):
            if (reply := self._leases.get(message.domain)) is not None:
                reply.set(message)
        elif isinstance(message, protocol.ChallengeReady):
            if (reply := self._confirmations.get(message.token)) is not None:
                reply.set(message)
        elif isinstance(message, protocol.Challenges):
            self.challenges.replace_shared(message.challenges)
            await self.client.send(protocol.ChallengesAck([c.token for c in message.challenges]))
        elif isinstance(message, protocol.CertificateInstall):
            try:
                self.certs.adopt(message.domain, message.chain_pem.encode("ascii"), message.key_pem.encode("ascii"))
            except (CertificateError, UnicodeEncodeError, OSError) as exc:  # OSError: could not persist it
                log(logger, logging.WARNING, "cannot install a certificate from control", domain=message.domain,
                    error=str(exc))

