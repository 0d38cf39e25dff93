"""HTTPS at the gateway without a CA: self-signed and bring-your-own certificates, SNI, redirects,
challenge answers, key files on disk."""

from __future__ import annotations

import ssl
import stat

import httpx
import pytest
import trio

from kakuremichi.certpair import CertificateError
from kakuremichi.gateway.certs.acme import AcmeSettings
from kakuremichi.gateway.certs.challenges import Challenge, ChallengeStore
from kakuremichi.gateway.certs.manager import FALLBACK_NAME, CertificateManager, RenewalPolicy
from kakuremichi.gateway.certs.store import CertStore
from kakuremichi.gateway.http.proxy import ProxySettings
from kakuremichi.gateway.routes import Route, RouteTable, TlsMode
from tests.gateway.conftest import peer_certificate, start_gateway, tls_handshake
from tests.gateway.pebble import free_port
from tests.gateway.testca import TestCA


@pytest.fixture
def store(tmp_path):
    return CertStore(tmp_path / "state")


async def start_tls_gateway(nursery, store, routes, **kwargs):
    challenges = ChallengeStore()
    manager = CertificateManager(store, challenges)
    manager.update_routes(routes)
    gw = await start_gateway(nursery, routes, tls_context=manager.context, challenges=challenges, **kwargs)
    return gw, manager, challenges


def trusting(pem: bytes) -> ssl.SSLContext:
    return ssl.create_default_context(cadata=pem.decode())


async def test_self_signed_route_over_https(nursery, store, app_port):
    routes = RouteTable([Route("dev.test", "127.0.0.1", app_port, tls=TlsMode.SELF_SIGNED)])
    gw, manager, _ = await start_tls_gateway(nursery, store, routes)
    chain, _ = store.read_pair("dev.test")
    context = trusting(chain)
    context.set_alpn_protocols(["h2", "http/1.1"])
    stream = await tls_handshake(gw.https_port, "dev.test", context)
    assert stream.version() in ("TLSv1.2", "TLSv1.3")
    assert stream.selected_alpn_protocol() == "h2"  # HTTP/2 when offered (tests/gateway/test_http2.py)
    await stream.aclose()
    context.set_alpn_protocols(["http/1.1"])
    stream = await tls_handshake(gw.https_port, "dev.test", context)
    assert stream.selected_alpn_protocol() == "http/1.1"
    await stream.aclose()
    async with httpx.AsyncClient(verify=trusting(chain)) as client:
        response = await client.get(f"https://127.0.0.1:{gw.https_port}/hello", headers={"host": "dev.test"},
                                    extensions={"sni_hostname": "dev.test"})
    assert response.json()["path"] == "/hello"
    headers = dict(response.json()["headers"])
    assert headers["x-forwarded-proto"] == "https"
    assert headers["forwarded"] == "for=127.0.0.1;host=dev.test;proto=https"


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated")
async def test_unknown_sni_gets_fallback_certificate_and_old_tls_is_refused(nursery, store, app_port):
    routes = RouteTable([Route("dev.test", "127.0.0.1", app_port, tls=TlsMode.SELF_SIGNED)])
    gw, _, _ = await start_tls_gateway(nursery, store, routes)
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    stream = await tls_handshake(gw.https_port, "other.test", context)
    assert f"CN={FALLBACK_NAME}" in peer_certificate(stream).subject.rfc4514_string()
    await stream.aclose()
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    old.check_hostname, old.verify_mode = False, ssl.CERT_NONE
    old.minimum_version = old.maximum_version = ssl.TLSVersion.TLSv1_1
    old.set_ciphers("ALL:@SECLEVEL=0")
    with pytest.raises(trio.BrokenResourceError):
        await tls_handshake(gw.https_port, "dev.test", old)


async def test_bring_your_own_certificate(nursery, store, app_port):
    ca = TestCA()
    routes = RouteTable([Route("byo.test", "127.0.0.1", app_port, tls=TlsMode.CUSTOM)])
    gw, manager, _ = await start_tls_gateway(nursery, store, routes)
    cert, key = ca.issue("byo.test")
    with pytest.raises(CertificateError, match="does not belong"):
        manager.install("byo.test", cert, ca.issue("byo.test")[1])
    with pytest.raises(CertificateError, match="is for other.test"):
        manager.install("byo.test", *ca.issue("other.test"))
    manager.install("byo.test", cert, key)
    async with httpx.AsyncClient(verify=trusting(ca.pem)) as client:
        response = await client.get(f"https://127.0.0.1:{gw.https_port}/", headers={"host": "byo.test"},
                                    extensions={"sni_hostname": "byo.test"})
    assert response.json()["app"] == "app"
    path = store.path("byo.test")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    # A restarted gateway serves it from disk.
    assert CertStore(store.root).load("byo.test").names == ("byo.test",)


async def test_force_https_redirects_but_answers_challenges(nursery, store, app_port):
    routes = RouteTable([Route("secure.test", "127.0.0.1", app_port, tls=TlsMode.SELF_SIGNED, force_https=True),
                         Route("plain.test", "127.0.0.1", app_port, tls=TlsMode.SELF_SIGNED)])
    gw, _, challenges = await start_tls_gateway(nursery, store, routes, settings=ProxySettings(https_port=8443))
    challenges.add(Challenge("secure.test", "tok_EN-1", "tok_EN-1.thumbprint"))
    async with httpx.AsyncClient(base_url=gw.url) as client:
        redirect = await client.post("/a/b?c=d", headers={"host": "Secure.test"}, content=b"x")
        assert redirect.status_code == 308
        assert redirect.headers["location"] == "https://secure.test:8443/a/b?c=d"
        plain = await client.get("/", headers={"host": "plain.test"})
        assert plain.status_code == 200
        token = await client.get("/.well-known/acme-challenge/tok_EN-1", headers={"host": "secure.test"})
        assert token.status_code == 200 and token.text == "tok_EN-1.thumbprint"
        other_host = await client.get("/.well-known/acme-challenge/tok_EN-1", headers={"host": "plain.test"})
        assert other_host.json()["path"] == "/.well-known/acme-challenge/tok_EN-1"  # proxied, not answered
        challenges.remove("tok_EN-1")
        gone = await client.get("/.well-known/acme-challenge/tok_EN-1", headers={"host": "secure.test"})
        assert gone.status_code == 308


async def test_force_https_responses_over_https_carry_hsts(nursery, store, app_port):
    routes = RouteTable([Route("secure.test", "127.0.0.1", app_port, tls=TlsMode.SELF_SIGNED, force_https=True),
                         Route("plain.test", "127.0.0.1", app_port, tls=TlsMode.SELF_SIGNED)])
    gw, _, _ = await start_tls_gateway(nursery, store, routes)
    for http2 in (False, True):
        async with httpx.AsyncClient(verify=False, http2=http2,
                                     base_url=f"https://127.0.0.1:{gw.https_port}") as client:
            secure = await client.get("/", headers={"host": "secure.test"})
            assert secure.http_version == ("HTTP/2" if http2 else "HTTP/1.1")
            assert secure.headers.get_list("strict-transport-security") == ["max-age=31536000"]
            own = await client.get("/?sts=max-age=60", headers={"host": "secure.test"})
            assert own.headers.get_list("strict-transport-security") == ["max-age=60"]  # the service's own
            plain = await client.get("/", headers={"host": "plain.test"})
            assert plain.status_code == 200 and "strict-transport-security" not in plain.headers
    async with httpx.AsyncClient(base_url=gw.url) as client:  # never over plain HTTP (RFC 6797 §7.2)
        assert "strict-transport-security" not in (await client.get("/", headers={"host": "secure.test"})).headers


async def test_route_removal_drops_its_certificate_from_sni(nursery, store, app_port):
    route = Route("dev.test", "127.0.0.1", app_port, tls=TlsMode.SELF_SIGNED)
    gw, manager, _ = await start_tls_gateway(nursery, store, RouteTable([route]))
    assert manager.selector.domains() == {"dev.test"}
    manager.update_routes([])
    assert manager.selector.domains() == set()


async def test_renewal_is_due_at_two_thirds_and_failures_back_off(store, app_port):
    manager = CertificateManager(store, ChallengeStore(),
                                 AcmeSettings(directory_url=f"https://127.0.0.1:{free_port()}/dir"),
                                 RenewalPolicy(retry_initial=10, jitter=0))
    route = Route("acme.test", "127.0.0.1", app_port, tls=TlsMode.ACME)
    manager.update_routes([route])
    ca = TestCA()
    stored = manager.install("acme.test", *ca.issue("acme.test"))  # e.g. handed over by another gateway
    assert manager.due("acme.test") == stored.not_before + (stored.not_after - stored.not_before) * 2 / 3
    for expected in (10, 20, 40):
        await manager._attempt("acme.test")  # nothing listens at the directory URL
        assert manager.states["acme.test"].history[-1] == expected
    assert "unavailable" in manager.states["acme.test"].last_error
    assert manager.due("acme.test") == manager.states["acme.test"].retry_at
