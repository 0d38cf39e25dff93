"""The access gate in the gateway's fronts over real sockets: on HTTP/2 streams (ALPN h2) the login form's body
is read on the stream and the session then opens the app; the access log says why requests were refused,
never with the secret tried."""

from __future__ import annotations

import dataclasses
import logging

import httpx
import trio

from kakuremichi.access.gate import MAX_FORM
from kakuremichi.access.passwords import hash_password
from kakuremichi.access.policy import AccessPolicy
from kakuremichi.gateway.certs.challenges import ChallengeStore
from kakuremichi.gateway.certs.manager import CertificateManager
from kakuremichi.gateway.certs.store import CertStore
from kakuremichi.gateway.routes import Route, RouteTable, TlsMode
from tests.gateway.conftest import start_gateway
from tests.gateway.test_http2 import HOST, h2_client
from tests.gateway.test_proxy import _access_lines


async def test_password_login_over_http2(nursery, tmp_path, app_port):
    policy = AccessPolicy("tun", b"k" * 32, mode="password", password_hash=hash_password("open sesame"))
    routes = RouteTable([Route(HOST, "127.0.0.1", app_port, tls=TlsMode.SELF_SIGNED, access=policy)])
    manager = CertificateManager(CertStore(tmp_path / "state"), ChallengeStore())
    manager.update_routes(routes)
    gateway = await start_gateway(nursery, routes, tls_context=manager.context)
    async with h2_client(gateway.https_port) as client:
        refused = await client.get("/headers", headers={"accept": "text/html"})
        assert refused.http_version == "HTTP/2" and refused.status_code == 401 and "<form" in refused.text
        too_big = await client.post("/.kakuremichi/login", content=b"password=" + b"x" * MAX_FORM,
                                    headers={"content-type": "application/x-www-form-urlencoded"})
        assert too_big.status_code == 413
        ok = await client.post("/.kakuremichi/login", data={"password": "open sesame", "next": "/headers"})
        assert ok.status_code == 303 and "Secure" in ok.headers["set-cookie"]
        seen = await client.get("/headers", headers={"cookie": f"kakuremichi_session={ok.cookies['kakuremichi_session']}"})
        assert seen.status_code == 200
        assert ["x-kakuremichi-user", "password"] in seen.json()["headers"]


async def test_refusals_are_logged_without_the_secrets(nursery, app_port, caplog):
    caplog.set_level(logging.INFO, logger="kakuremichi.gateway.access")
    policy = AccessPolicy("tun", b"k" * 32, mode="password", password_hash=hash_password("open sesame"))
    gateway = await start_gateway(nursery, RouteTable([Route("app.test", "127.0.0.1", app_port, access=policy)]))
    async with httpx.AsyncClient(base_url=gateway.url, headers={"host": "app.test"}) as client:
        assert (await client.post("/.kakuremichi/login", data={"password": "guess-one"})).status_code == 401
        assert (await client.get("/.kakuremichi/share/not-a-real-link-token")).status_code == 403
    wrong, share = _access_lines(caplog)
    assert wrong["error"] == "access_password_wrong" and share["error"] == "access_share_refused"
    assert share["path"] == "/.kakuremichi/share/..."
    assert "guess-one" not in caplog.text and "not-a-real-link-token" not in caplog.text


async def test_a_policy_change_ends_the_exchanges_in_flight_on_that_tunnel(nursery, app_port):
    """Revoking sessions must also end what they opened (a long request, a WebSocket), not only new requests."""
    policy = AccessPolicy("tun", b"k" * 32, mode="password", password_hash=hash_password("open sesame"))
    route = Route("app.test", "127.0.0.1", app_port, access=policy)
    gateway = await start_gateway(nursery, RouteTable([route]))
    async with httpx.AsyncClient(base_url=gateway.url, headers={"host": "app.test"}, timeout=30) as client:
        login = await client.post("/.kakuremichi/login", data={"password": "open sesame"})
        cookie = {"cookie": f"kakuremichi_session={login.cookies['kakuremichi_session']}"}
        answers = []

        async def slow() -> None:
            answers.append(await client.get("/slow?delay=10", headers=cookie))

        async with trio.open_nursery() as requests:
            requests.start_soon(slow)
            await trio.sleep(0.5)
            gateway.routes.replace([dataclasses.replace(route, access=dataclasses.replace(policy, epoch=1))])
        assert answers[0].status_code == 404  # cut off, not left to finish
        assert (await client.get("/headers", headers=cookie)).status_code == 401
