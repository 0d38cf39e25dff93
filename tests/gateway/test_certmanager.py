"""The certificate manager's bookkeeping when a certificate arrives while its own ACME attempt is under way."""

from __future__ import annotations

from collections.abc import Callable

import trio

from kakuremichi.gateway.certs.acme import AcmeSettings
from kakuremichi.gateway.certs.challenges import ChallengeStore
from kakuremichi.gateway.certs.manager import CertificateManager, RenewalPolicy
from kakuremichi.gateway.certs.store import CertStore
from kakuremichi.gateway.routes import Route, TlsMode
from tests.gateway.testca import TestCA

DOMAIN = "acme.test"


async def failed_attempt(tmp_path, meanwhile: Callable[[CertificateManager], None]) -> CertificateManager:
    """One ACME attempt against a "CA" that accepts the connection, waits for `meanwhile` to run, then hangs
    up: the order fails at a moment the test chooses."""
    (ca_listener,) = await trio.open_tcp_listeners(0, host="127.0.0.1")
    directory = f"http://127.0.0.1:{ca_listener.socket.getsockname()[1]}/dir"
    manager = CertificateManager(CertStore(tmp_path), ChallengeStore(), AcmeSettings(directory_url=directory),
                                 RenewalPolicy(retry_initial=10, jitter=0))
    manager.update_routes([Route(DOMAIN, "127.0.0.1", 9, tls=TlsMode.ACME)])
    async with ca_listener, trio.open_nursery() as nursery:
        nursery.start_soon(manager._attempt, DOMAIN)
        with trio.fail_after(30):
            connection = await ca_listener.accept()  # the attempt now waits for the CA's directory
        meanwhile(manager)
        await connection.aclose()
    return manager


async def test_a_certificate_installed_during_an_attempt_outlives_the_attempts_failure(tmp_path):
    installed = []

    def install(manager: CertificateManager) -> None:  # e.g. another gateway's, pushed by control
        installed.append((manager.states[DOMAIN], manager.install(DOMAIN, *TestCA().issue(DOMAIN, days=90))))

    manager = await failed_attempt(tmp_path, install)
    ((state, stored),) = installed
    assert manager.states[DOMAIN] is state  # kept and reset, not replaced under the attempt
    assert (state.failures, state.retry_at, state.last_error, state.history) == (0, None, "", [])
    assert manager.due(DOMAIN) == stored.renewal_due(manager.policy.fraction)  # no retry scheduled


async def test_an_attempt_failing_with_no_certificate_arriving_backs_off(tmp_path):
    manager = await failed_attempt(tmp_path, lambda manager: None)
    state = manager.states[DOMAIN]
    assert state.failures == 1 and state.history == [10] and "unavailable" in state.last_error
    assert manager.due(DOMAIN) == state.retry_at
