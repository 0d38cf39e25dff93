"""RFC 8555 certificate issuance with HTTP-01, on top of the `acme` package (certbot's library).

The library is blocking (requests + sleeps while polling), so everything here is synchronous and
meant to run in a worker thread (`trio.to_thread.run_sync`); challenge publication is handed back
to the caller through callbacks. JOSE signing, CSRs and key authorizations are the library's — no
cryptography is done by hand.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Callable
from dataclasses import dataclass

import josepy
import requests
from acme import challenges, client, crypto_util, errors, messages
from cryptography.hazmat.primitives import serialization

from kakuremichi.logs import log

logger = logging.getLogger("kakuremichi.gateway.acme")
LETS_ENCRYPT = "https://acme-v02.api.letsencrypt.org/directory"
LETS_ENCRYPT_STAGING = "https://acme-staging-v02.api.letsencrypt.org/directory"
USER_AGENT = "kakuremichi-gateway"


class AcmeError(Exception):
    """Issuance failed; the message says where (directory, account, validation, finalize)."""


@dataclass(frozen=True)
class AcmeSettings:
    directory_url: str = LETS_ENCRYPT
    email: str | None = None  # contact for expiry notices; optional for most CAs
    ca_bundle: str | None = None  # CA file trusted for the ACME server's own HTTPS (test CAs)
    timeout: float = 90.0  # for validation and finalisation of one order


class AcmeClient:
    """One ACME account at one CA; `issue()` blocks, so call it from a worker thread."""

    def __init__(self, settings: AcmeSettings, account_key_pem: bytes) -> None:
        self.settings = settings
        key = serialization.load_pem_private_key(account_key_pem, password=None)
        self._key = josepy.JWKRSA(key=key)
        self._client: client.ClientV2 | None = None

    def _connect(self) -> client.ClientV2:
        """Fetch the directory and find or create the account (the CA answers 200 for a known key)."""
        if self._client is not None:
            return self._client
        net = client.ClientNetwork(self._key, user_agent=USER_AGENT, timeout=30,
                                   verify_ssl=self.settings.ca_bundle or True)
        try:
            directory = client.ClientV2.get_directory(self.settings.directory_url, net)
        except (requests.RequestException, errors.Error, ValueError) as exc:
            raise AcmeError(f"ACME directory {self.settings.directory_url} unavailable: {exc}") from None
        acme = client.ClientV2(directory, net)
        registration = messages.NewRegistration.from_data(
            email=self.settings.email, terms_of_service_agreed=True)
        try:
            acme.new_account(registration)
            log(logger, logging.INFO, "ACME account registered", directory=self.settings.directory_url)
        except errors.ConflictError as existing:
            net.account = messages.RegistrationResource(uri=existing.location, body=messages.Registration())
        except (requests.RequestException, errors.Error, messages.Error) as exc:
            raise AcmeError(f"ACME account registration failed: {exc}") from None
        self._client = acme
        return acme

    def issue(self, domain: str, key_pem: bytes, publish: Callable[[str, str], None],
              withdraw: Callable[[str], None]) -> bytes:
        """Order, validate over HTTP-01 and download a certificate for `domain`; returns the full chain.

        `publish(token, key_authorization)` must make the answer reachable at
        http://<domain>/.well-known/acme-challenge/<token> before it returns; `withdraw(token)` undoes it.
        """
        try:
            return self._issue(domain, key_pem, publish, withdraw)
        except (requests.RequestException, errors.Error, messages.Error) as exc:
            self._client = None  # a fresh directory and nonce next time
            raise AcmeError(f"ACME issuance for {domain} failed: {_describe(exc)}") from None

    def _issue(self, domain: str, key_pem: bytes, publish, withdraw) -> bytes:
        acme = self._connect()
        order = acme.new_order(crypto_util.make_csr(key_pem, [domain]))
        tokens = []
        try:
            for authz in order.authorizations:
                if authz.body.status == messages.STATUS_VALID:
                    continue  # the CA remembers an earlier validation
                challb = next((c for c in authz.body.challenges if isinstance(c.chall, challenges.HTTP01)), None)
                if challb is None:
                    raise AcmeError(f"the CA offers no HTTP-01 challenge for {domain}")
                response, key_authorization = challb.response_and_validation(self._key)
                token = challb.chall.encode("token")
                publish(token, key_authorization)
                tokens.append(token)
                acme.answer_challenge(challb, response)
            deadline = datetime.datetime.now() + datetime.timedelta(seconds=self.settings.timeout)
            order = acme.poll_and_finalize(order, deadline)
        finally:
            for token in tokens:
                withdraw(token)
        return order.fullchain_pem.encode("ascii")


def _describe(exc: BaseException) -> str:
    """The CA's problem details (they say what went wrong in validation), not a Python repr."""
    if isinstance(exc, errors.ValidationError):
        problems = [c.error for a in exc.failed_authzrs for c in a.body.challenges if c.error]
        return "; ".join(str(p) for p in problems) or "validation failed"
    return str(exc) or type(exc).__name__
