"""Automatic certificates from a real ACME CA (Pebble) for one gateway on its own: issuance over HTTP-01
through the gateway's HTTP listener, HTTPS with the issued certificate, forced renewal, and a failing CA
retried with backoff. Several gateways sharing certificates through control: test_acme_cluster.py."""

from __future__ import annotations

import logging
import ssl

import httpx
import trio

from kakuremichi.gateway.certs.acme import AcmeSettings
from kakuremichi.gateway.certs.challenges import ChallengeStore
from kakuremichi.gateway.certs.manager import CertificateManager, RenewalPolicy
from kakuremichi.gateway.certs.store import CertStore
from kakuremichi.gateway.routes import Route, RouteTable, TlsMode
from tests.gateway.conftest import peer_certificate, start_gateway, tls_handshake
from tests.gateway.pebble import Pebble, free_port, needs_pebble

pytestmark = needs_pebble
DOMAIN = "app.kakuremichi.test"


async def wait_for_certificate(manager: CertificateManager, domain: str, timeout: float = 60):
    with trio.fail_after(timeout):
        while manager.store.load(domain) is None:
            await trio.sleep(0.1)
    return manager.store.load(domain)


async def test_certificate_issued_and_renewed(nursery, tmp_path, app_port, pebble_processes):
    routes = RouteTable([Route(DOMAIN, "127.0.0.1", app_port, tls=TlsMode.ACME, force_https=True)])
    challenges = ChallengeStore()
    gateway_http_port = free_port()
    pebble = Pebble(tmp_path, http_port=gateway_http_port)
    await pebble.start()
    pebble_processes.append(pebble)
    acme = AcmeSettings(directory_url=pebble.directory_url, ca_bundle=str(pebble.ca_bundle), timeout=30)
    manager = CertificateManager(CertStore(tmp_path / "gw1"), challenges, acme)
    gw = await start_gateway(nursery, routes, tls_context=manager.context, challenges=challenges,
                             http_port=gateway_http_port)
    manager.update_routes(routes)

    await nursery.start(manager.run)
    first = await wait_for_certificate(manager, DOMAIN)
    assert first.names == (DOMAIN,)
    assert manager.due(DOMAIN) == first.renewal_due(2 / 3)
    assert len(challenges) == 0  # withdrawn after validation

    trust = ssl.create_default_context(cadata=(await pebble.root_pem()).decode())
    async with httpx.AsyncClient(verify=trust) as client:
        response = await client.get(f"https://127.0.0.1:{gw.https_port}/via-tls", headers={"host": DOMAIN},
                                    extensions={"sni_hostname": DOMAIN})
        assert response.status_code == 200 and response.json()["path"] == "/via-tls"
        assert dict(response.json()["headers"])["x-forwarded-proto"] == "https"
        redirect = await client.get(f"http://127.0.0.1:{gw.port}/x", headers={"host": DOMAIN})
        assert redirect.status_code == 308 and redirect.headers["location"] == f"https://{DOMAIN}/x"

    renewed = await manager.obtain(DOMAIN)  # forced renewal
    assert renewed.serial != first.serial
    stream = await tls_handshake(gw.https_port, DOMAIN, trust)
    assert peer_certificate(stream).serial_number == renewed.serial
    await stream.aclose()


async def test_failing_ca_is_retried_with_backoff(nursery, tmp_path, app_port, pebble_processes, caplog):
    caplog.set_level(logging.WARNING, logger="kakuremichi.gateway.certs")
    routes = RouteTable([Route(DOMAIN, "127.0.0.1", app_port, tls=TlsMode.ACME)])
    challenges = ChallengeStore()
    gateway_http_port = free_port()
    pebble = Pebble(tmp_path, http_port=gateway_http_port)  # configured, not started: the CA is down
    acme = AcmeSettings(directory_url=pebble.directory_url, ca_bundle=str(pebble.ca_bundle), timeout=30)
    manager = CertificateManager(CertStore(tmp_path / "gw"), challenges, acme,
                                 RenewalPolicy(retry_initial=0.1, retry_max=1.0, jitter=0.1))
    await start_gateway(nursery, routes, tls_context=manager.context, challenges=challenges,
                        http_port=gateway_http_port)
    manager.update_routes(routes)
    await nursery.start(manager.run)

    with trio.fail_after(20):
        while manager.states[DOMAIN].failures < 3:
            await trio.sleep(0.05)
    delays = manager.states[DOMAIN].history[:3]
    assert delays[0] < delays[1] < delays[2]  # 0.1, 0.2, 0.4 (±10%)
    assert "unavailable" in manager.states[DOMAIN].last_error
    warnings = [r for r in caplog.records if r.getMessage() == "certificate request failed; will retry"]
    assert len(warnings) >= 3 and warnings[0].fields["domain"] == DOMAIN

    await pebble.start()  # the CA comes back: the next retry succeeds
    pebble_processes.append(pebble)
    stored = await wait_for_certificate(manager, DOMAIN)
    assert stored.names == (DOMAIN,)
    with trio.fail_after(5):
        while manager.states[DOMAIN].failures:
            await trio.sleep(0.05)
