"""Access control end to end: control, two gateways, an agent and an app that counts the requests it gets,
every one a separate process on real sockets. In every refused case the app receives nothing."""

from __future__ import annotations

import base64
import textwrap
import time

import httpx
import pytest

from kakuremichi.access import tokens
from kakuremichi.access.tokens import Claims
from kakuremichi.control.access import derive_key
from tests.deployment import Deployment, wait_for

COUNTING_APP = textwrap.dedent('''
    import json, sys, threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    count = 0
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        def log_message(self, *args): pass
        def do_GET(self):
            global count
            if self.path == "/__count":  # asked by the test directly, never through the tunnel
                body = str(count).encode()
            else:
                with lock:
                    count += 1
                body = json.dumps({"path": self.path,
                                   "headers": {k.lower(): v for k, v in self.headers.items()}}).encode()
            self.send_response(200)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        do_POST = do_GET

    server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
    server.daemon_threads = True
    print("ready", flush=True)
    server.serve_forever()
''')
PASSWORD = "correct horse battery"
HTML = {"accept": "text/html"}


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("access")
    d = Deployment(tmp, {"a": ("-c", COUNTING_APP), "b": ("-c", COUNTING_APP)})
    d.tunnel_a = d.tunnel("a.localhost", "a", access={"mode": "password", "password": PASSWORD})
    d.tunnel_b = d.tunnel("b.localhost", "b", access={"mode": "password", "password": PASSWORD})
    for gateway in ("gw1", "gw2"):
        for domain in ("a.localhost", "b.localhost"):
            wait_for(lambda: (r := d.get(gateway, domain)) is not None and r.status_code == 401, 60,
                     f"{domain} protected on {gateway}")
    key = derive_key(base64.urlsafe_b64decode((tmp / "control" / "secrets.key").read_text().strip()))
    d.access_key = key
    yield d
    d.close()


def count(d: Deployment, app: str) -> int:
    return int(httpx.get(f"http://127.0.0.1:{d.apps[app]}/__count").text)


def request(d: Deployment, domain: str, path: str = "/", *, gateway: str = "gw1", method: str = "GET",
            headers: dict | None = None, data: dict | None = None, session: str | None = None) -> httpx.Response:
    headers = {"host": domain, **(headers or {})}
    if session is not None:
        headers["cookie"] = f"kakuremichi_session={session}"
    return httpx.request(method, d.url(gateway, path), headers=headers, data=data, timeout=10)


def login(d: Deployment, domain: str, password: str = PASSWORD) -> httpx.Response:
    return request(d, domain, "/.kakuremichi/login", method="POST", data={"password": password, "next": "/inside"})


def session_of(response: httpx.Response) -> str:
    return response.cookies["kakuremichi_session"]


def refused(d: Deployment, app: str, *responses_of) -> list[int]:
    """The statuses of the requests `responses_of` makes, asserting that the app received none of them."""
    before = count(d, app)
    statuses = [make().status_code for make in responses_of]
    assert count(d, app) == before, "a refused request reached the app"
    return statuses


def patch_access(d: Deployment, tunnel: dict, access: dict, until) -> None:
    response = d.api.patch(f"/api/tunnels/{tunnel['id']}", json={"access": access})
    assert response.status_code == 200, response.text
    wait_for(until, 30, "the gateways to follow the new policy")


def test_password_mode_logs_in_and_the_session_works_on_every_gateway(deployment):
    d = deployment
    page, wrong = refused(d, "a", lambda: request(d, "a.localhost", headers=HTML), lambda: login(d, "a.localhost", "nope"))
    assert page == 401 and wrong == 401
    form = request(d, "a.localhost", "/x?y=1", headers=HTML)
    assert "<form method=post action='/.kakuremichi/login'>" in form.text and "value='/x?y=1'" in form.text
    ok = login(d, "a.localhost")
    assert ok.status_code == 303 and ok.headers["location"] == "/inside"
    cookie = ok.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Domain" not in cookie
    before = count(d, "a")
    for gateway in ("gw1", "gw2"):  # every gateway checks the session itself
        seen = request(d, "a.localhost", "/inside", gateway=gateway, session=session_of(ok),
                       headers={"x-kakuremichi-user": "admin", "cookie": "theme=dark"})
        assert seen.status_code == 200, seen.text
        headers = seen.json()["headers"]
        assert headers["x-kakuremichi-user"] == "password" and "kakuremichi_session" not in headers.get("cookie", "")
    assert count(d, "a") == before + 2


def test_a_cookie_of_tunnel_a_a_tampered_or_an_expired_one_is_refused(deployment):
    d = deployment
    session = session_of(login(d, "a.localhost"))
    payload, mac = session.split(".")
    tampered = payload[:-2] + ("AA" if payload[-2:] != "AA" else "BB") + "." + mac
    now = time.time()
    expired = tokens.sign(d.access_key, "session", Claims(tunnel=d.tunnel_a["id"], expires=now - 1, issued=now - 99,
                                                          user="password"))
    statuses = refused(d, "b", lambda: request(d, "b.localhost", session=session))
    statuses += refused(d, "a", lambda: request(d, "a.localhost", session=tampered),
                        lambda: request(d, "a.localhost", session=expired))
    assert statuses == [401, 401, 401]


def test_share_links_valid_expired_and_revoked(deployment):
    d = deployment
    link = d.api.post(f"/api/tunnels/{d.tunnel_a['id']}/share-links", json={"expiresInHours": 1}).json()
    path = link["url"].removeprefix("http://a.localhost")
    opened = request(d, "a.localhost", path)
    assert opened.status_code == 303 and opened.headers["location"] == "/"
    seen = request(d, "a.localhost", session=session_of(opened))
    assert seen.status_code == 200 and seen.json()["headers"]["x-kakuremichi-user"] == f"share:{link['id']}"
    now = time.time()
    expired = tokens.sign(d.access_key, "share", Claims(tunnel=d.tunnel_a["id"], expires=now - 1, issued=now - 60,
                                                        id="old"))
    foreign = tokens.sign(d.access_key, "share", Claims(tunnel=d.tunnel_b["id"], expires=now + 60, issued=now, id="b"))
    assert refused(d, "a", lambda: request(d, "a.localhost", f"/.kakuremichi/share/{expired}"),
                   lambda: request(d, "a.localhost", f"/.kakuremichi/share/{foreign}")) == [403, 403]
    assert d.api.delete(f"/api/tunnels/{d.tunnel_a['id']}/share-links/{link['id']}").status_code == 204
    wait_for(lambda: request(d, "a.localhost", session=session_of(opened)).status_code == 401, 30,
             "the revoked link's session to be refused")
    assert refused(d, "a", lambda: request(d, "a.localhost", path),
                   lambda: request(d, "a.localhost", session=session_of(opened), gateway="gw2")) == [403, 401]


def test_revoking_sessions_ends_them_on_every_gateway(deployment):
    d = deployment
    session = session_of(login(d, "b.localhost"))
    assert request(d, "b.localhost", session=session).status_code == 200
    assert d.api.post(f"/api/tunnels/{d.tunnel_b['id']}/revoke-sessions").status_code == 200
    for gateway in ("gw1", "gw2"):
        wait_for(lambda: request(d, "b.localhost", gateway=gateway, session=session).status_code == 401, 30,
                 "the session to be revoked")
    assert refused(d, "b", lambda: request(d, "b.localhost", session=session)) == [401]
    assert request(d, "b.localhost", session=session_of(login(d, "b.localhost"))).status_code == 200


def test_ranked_cidr_rules_bypass_and_header_stripping(deployment):
    d = deployment
    tunnel = d.tunnel_b
    patch_access(d, tunnel, {"mode": "password", "rules": [{"action": "deny", "cidr": "127.0.0.0/8"}]},
                 lambda: request(d, "b.localhost").status_code == 403)
    session = session_of(login(d, "a.localhost"))
    assert refused(d, "b", lambda: request(d, "b.localhost", headers=HTML), lambda: login(d, "b.localhost")) == [403, 403]
    # first match wins: the bypass for this one address comes before the deny of its network
    patch_access(d, tunnel, {"mode": "password", "rules": [{"action": "bypass", "cidr": "127.0.0.1/32"},
                                                            {"action": "deny", "cidr": "127.0.0.0/8"}]},
                 lambda: request(d, "b.localhost").status_code == 200)
    seen = request(d, "b.localhost", headers={"x-kakuremichi-user": "admin", "x-kakuremichi-email": "boss@x.org",
                                              "x-kakuremichi-groups": "admins"})
    assert not any(name.startswith("x-kakuremichi-") for name in seen.json()["headers"])
    # native apps: a path prefix, or the tunnel's secret as a header or a Basic password
    patch_access(d, tunnel, {"mode": "password", "bypassPaths": ["/caldav/"], "bypassSecret": "app-secret-0123456789"},
                 lambda: request(d, "b.localhost").status_code == 401)
    assert request(d, "b.localhost", "/caldav/home.ics").status_code == 200
    assert request(d, "b.localhost", headers={"x-kakuremichi-bypass": "app-secret-0123456789"}).status_code == 200
    basic = "Basic " + base64.b64encode(b"phone:app-secret-0123456789").decode()
    assert request(d, "b.localhost", headers={"authorization": basic}).status_code == 200
    assert refused(d, "b", lambda: request(d, "b.localhost", "/caldav/%2e%2e/admin"),
                   lambda: request(d, "b.localhost", headers={"x-kakuremichi-bypass": "wrong-secret-0123456"}),
                   lambda: request(d, "b.localhost", session=session)) == [401, 401, 401]
