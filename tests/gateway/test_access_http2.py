"""The access gate on HTTP/2 streams (ALPN h2), over real sockets: the login form's body is read on the stream,
and the session then opens the app."""

from __future__ import annotations

from kakuremichi.access.gate import MAX_FORM
from kakuremichi.access.passwords import hash_password
from kakuremichi.access.policy import AccessPolicy
from kakuremichi.gateway.certs.challenges import ChallengeStore
from kakuremichi.gateway.certs.manager import CertificateManager
from kakuremichi.gateway.certs.store import CertStore
from kakuremichi.gateway.routes import Route, RouteTable, TlsMode
from tests.gateway.conftest import start_gateway
from tests.gateway.test_http2 import HOST, h2_client


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
