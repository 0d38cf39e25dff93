"""The web UI over plain HTTP: cookie flags, CSRF tokens, redirects, the event stream, error pages."""

from __future__ import annotations

import dataclasses
import logging
import re
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
import trio

from kakuremichi import protocol
from kakuremichi.control.web import session, status
from tests.control.conftest import ADMIN, connect, start_control


def _csrf(page: httpx.Response) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)


@asynccontextmanager
async def _logged_in(url: str):
    """An HTTP client with a cookie jar that logged in through the form, like a browser."""
    async with httpx.AsyncClient(base_url=url) as client:
        token = _csrf(await client.get("/login"))
        response = await client.post("/login", data={"csrf_token": token, "password": ADMIN})
        assert response.status_code == 302 and response.headers["location"] == "/"
        yield client


async def test_post_without_the_csrf_token_is_rejected(control):
    async with _logged_in(control.url) as browser:
        refused = await browser.post("/agents/new", data={"name": "forged"})
        assert refused.status_code == 400 and "Form expired" in refused.text
        async with _logged_in(control.url) as other:  # a token of another session does not count
            stolen = _csrf(await other.get("/agents/new"))
        for token in (stolen, "é" * 43, ""):
            assert (await browser.post("/agents/new", data={"name": "forged", "csrf_token": token})).status_code == 400
        assert (await control.api.get("/api/agents")).json()["total"] == 0
        accepted = await browser.post("/agents/new", data={"name": "real", "csrf_token": _csrf(await browser.get("/"))})
        assert accepted.status_code == 201 and "agt_" in accepted.text


async def test_session_cookie_flags(control):
    async with _logged_in(control.url) as browser:
        pass
    page = await control.api.get("/login")  # no admin session: the bearer token does not count here
    cookie = page.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Secure" not in cookie
    control.api.cookies.clear()
    behind_tls = await control.api.get("/login", headers={"X-Forwarded-Proto": "https"})
    assert "Secure" in behind_tls.headers["set-cookie"]
    assert page.headers["content-security-policy"].startswith("default-src 'self'")
    assert browser.cookies.get("kakuremichi_session")


async def test_anonymous_requests_are_sent_to_login(control):
    async with httpx.AsyncClient(base_url=control.url) as anonymous:
        page = await anonymous.get("/agents/abc")
        assert page.status_code == 302 and page.headers["location"] == "/login?next=/agents/abc"
        assert (await anonymous.get("/events")).status_code == 401
        assert (await anonymous.get("/assets/style.css")).status_code == 200


_OFF_SITE = ["/%09/evil.example/x", "/%0d/evil.example/x", "/%0a/evil.example/x", "%09//evil.example", "/\\evil.example",
             "/%5Cevil.example", "\\\\evil.example", "//evil.example", "///evil.example", "/%2F/evil.example",
             "/%252F/evil.example", "https://evil.example/", "https:evil.example", "javascript:alert(1)",
             "%20/evil.example", "/x%0a%0dSet-Cookie:%20a=b", "/%00/evil.example", "/%E2%80%A8/evil.example", "evil"]


async def _login_redirect(url: str, raw_next: str) -> str:
    """Where the login form sends a browser that came with `?next=` exactly as `raw_next` (not re-encoded)."""
    async with httpx.AsyncClient(base_url=url) as browser:
        token = _csrf(await browser.get("/login"))
        response = await browser.post(f"/login?next={raw_next}", data={"csrf_token": token, "password": ADMIN})
        assert response.status_code == 302
        return response.headers["location"]


async def test_login_goes_on_only_to_a_path_of_this_site(control):
    for raw_next in _OFF_SITE:
        assert await _login_redirect(control.url, raw_next) == "/", raw_next
    assert await _login_redirect(control.url, "/agents/abc%3Fx") == "/agents/abc?x"
    assert await _login_redirect(control.url, "/tunnels/new%3Fagent%3D1") == "/tunnels/new?agent=1"


async def test_event_stream_sends_status_changes(control):
    agent = await control.create("agents", name="a")
    async with _logged_in(control.url) as browser:
        async with browser.stream("GET", "/events") as stream:
            lines = stream.aiter_lines()
            with trio.fail_after(5):
                first = [await anext(lines) for _ in range(2)]
            assert first[0] == "event: status" and '"status": "offline"' in first[1]
            await control.api.patch(f"/api/agents/{agent['id']}", json={"name": "renamed"})
            with trio.fail_after(5):
                while '"name": "renamed"' not in await anext(lines):
                    pass


@pytest.mark.parametrize("path", ["/agents/nope", "/tunnels/nope/edit", "/agents/nope/edit", "/agents/nope/delete",
                                  "/gateways/nope/rotate-key"])
async def test_missing_items_get_a_page(control, path):
    async with _logged_in(control.url) as browser:
        page = await browser.get(path)
        assert page.status_code == 404 and "<h1>Not found</h1>" in page.text


async def test_deleting_an_agent_says_what_goes_with_it(control):
    agent = await control.create("agents", name="home")
    for domain in ("a.example.com", "b.example.com"):
        await control.create("tunnels", domain=domain, agentId=agent["id"], target="127.0.0.1:8080")
    async with _logged_in(control.url) as browser:
        page = await browser.get(f"/agents/{agent['id']}/delete")
        assert "Delete agent home" in page.text and "Its 2 tunnels are deleted with it." in page.text
        done = await browser.post(f"/agents/{agent['id']}/delete", data={"csrf_token": _csrf(page)})
        assert done.status_code == 302 and done.headers["location"] == "/agents"
        again = await browser.post(f"/agents/{agent['id']}/delete", data={"csrf_token": _csrf(page)})
        assert again.status_code == 404 and "<h1>Not found</h1>" in again.text
    assert (await control.api.get("/api/tunnels")).json()["total"] == 0


@pytest.mark.both_databases
async def test_a_cookie_copied_before_logout_is_refused_after_it_by_every_control(nursery, settings):
    first = await start_control(nursery, settings)
    second = await start_control(nursery, dataclasses.replace(settings))  # same database and data dir
    async with first.api, second.api, _logged_in(first.url) as browser:
        copied = httpx.Cookies(browser.cookies)
        async with httpx.AsyncClient(base_url=second.url, cookies=copied) as thief:
            assert (await thief.get("/agents")).status_code == 200
            async with thief.stream("GET", "/events") as stream:
                lines = stream.aiter_lines()
                with trio.fail_after(5):
                    assert await anext(lines) == "event: status"
                logout = await browser.post("/logout", data={"csrf_token": _csrf(await browser.get("/"))})
                assert logout.status_code == 302 and logout.headers["location"] == "/login"
                with trio.fail_after(10):  # the open stream ends too
                    async for _ in lines:
                        pass
            assert (await thief.get("/agents")).status_code == 302
        async with httpx.AsyncClient(base_url=first.url, cookies=copied) as thief:
            assert (await thief.get("/agents")).status_code == 302
            assert (await thief.get("/events")).status_code == 401


async def test_sessions_survive_a_restart_but_not_a_new_admin_token(settings):
    async def run(settings, check) -> None:
        async with trio.open_nursery() as nursery:
            ctl = await start_control(nursery, settings)
            async with ctl.api:
                await check(ctl.url)
            nursery.cancel_scope.cancel()

    cookies = httpx.Cookies()

    async def log_in(url: str) -> None:
        async with _logged_in(url) as browser:
            cookies.update(browser.cookies)

    async def status_of_agents_page(url: str) -> int:
        async with httpx.AsyncClient(base_url=url, cookies=cookies) as browser:
            return (await browser.get("/agents")).status_code

    async def still_logged_in(url: str) -> None:
        assert await status_of_agents_page(url) == 200  # the signing secret was kept in the data dir

    async def logged_out(url: str) -> None:
        assert await status_of_agents_page(url) == 302

    await run(settings, log_in)
    await run(settings, still_logged_in)
    await run(dataclasses.replace(settings, admin_token="kma_a-new-token"), logged_out)
    assert (Path(settings.data_dir) / "web-session-secret").stat().st_mode & 0o777 == 0o600


def test_status_text():
    now = datetime(2026, 1, 1, 12, 0, 0)
    names = {"KEY1": "gw1", "KEY2": "gw2"}
    stats = {"stats": {"peers": {"KEY1": {"connected": True, "rxBytes": 1500, "txBytes": 2_500_000},
                                 "KEY2": {"connected": False, "rxBytes": 0, "txBytes": 12},
                                 "KEY3": "garbage"}}}

    def describe(row) -> dict[str, str]:
        return status.describe(row, status.peers(row, names), now)

    online = SimpleNamespace(status="online", metadata=stats, last_seen_at=now)
    assert describe(online) == {"status": "online", "lastSeen": "now", "peers": "1 of 2: gw1",
                                "traffic": "↓ 1.5 kB · ↑ 2.5 MB"}
    offline = SimpleNamespace(status="offline", metadata=stats, last_seen_at=now - timedelta(minutes=90))
    assert describe(offline)["peers"] == "—"
    assert describe(offline)["lastSeen"] == "1 hour ago"
    fresh = SimpleNamespace(status="offline", metadata=None, last_seen_at=None)
    assert describe(fresh) == {"status": "offline", "lastSeen": "never connected", "peers": "—", "traffic": "—"}
    assert [status.format_ago(now - timedelta(seconds=s), now) for s in (5, 60, 7200, 3 * 86400)] == [
        "less than a minute ago", "1 minute ago", "2 hours ago", "3 days ago"]
    assert [status.format_bytes(n) for n in (0, 999, 1000, 10**12 * 5000)] == ["0 B", "999 B", "1.0 kB", "5000.0 TB"]


async def test_a_closed_event_stream_stops(control, monkeypatch):
    calls = []
    monkeypatch.setattr(status, "snapshot", lambda db: calls.append(1) or {})
    async with _logged_in(control.url) as browser:
        async with browser.stream("GET", "/events") as stream:
            with trio.fail_after(5):
                await anext(stream.aiter_lines())
    for i in range(3):  # each wakes the stream, were it still running
        await control.create("agents", name=f"wake{i}")
        await trio.sleep(0.1)
    assert len(calls) == 1


def test_session_secret_is_made_once_and_a_damaged_one_is_refused(tmp_path):
    from kakuremichi.control.web.session import _secret

    path = tmp_path / "web-session-secret"
    first = _secret(path)
    assert len(first) == 32 and _secret(path) == first and not list(tmp_path.glob("*.tmp"))
    path.write_text("")  # e.g. a disk that filled up while it was written
    with pytest.raises(OSError, match="not a web session secret"):
        _secret(path)


async def test_the_tunnel_form_turns_the_exit_node_proxies_on_and_off(control):
    agent = await control.create("agents", name="home")
    tunnel = await control.create("tunnels", domain="exit.example.com", agentId=agent["id"], target="127.0.0.1:8080")
    async with _logged_in(control.url) as browser:
        page = await browser.get(f"/tunnels/{tunnel['id']}/edit")
        assert 'name="socksProxyEnabled"' in page.text and 'name="httpProxyEnabled"' in page.text
        form = {"csrf_token": _csrf(page), "domain": "exit.example.com", "agentId": agent["id"],
                "target": "127.0.0.1:8080", "tlsMode": "acme", "enabled": "on"}
        saved = await browser.post(f"/tunnels/{tunnel['id']}/edit", data={**form, "socksProxyEnabled": "on"})
        assert saved.status_code == 302
        stored = (await control.api.get(f"/api/tunnels/{tunnel['id']}")).json()
        assert stored["socksProxyEnabled"] and not stored["httpProxyEnabled"]
        page = await browser.get(f"/tunnels/{tunnel['id']}/edit")
        assert re.search(r'name="socksProxyEnabled"[^>]*checked', page.text)
        await browser.post(f"/tunnels/{tunnel['id']}/edit", data={**form, "csrf_token": _csrf(page)})
        assert not (await control.api.get(f"/api/tunnels/{tunnel['id']}")).json()["socksProxyEnabled"]


async def _try_password(client: httpx.AsyncClient, password: str) -> httpx.Response:
    client.cookies.clear()
    token = _csrf(await client.get("/login"))
    return await client.post("/login", data={"csrf_token": token, "password": password})


async def test_login_guesses_are_throttled_per_address_and_logged_once(control, caplog):
    caplog.set_level(logging.WARNING, "kakuremichi.control.web")
    async with httpx.AsyncClient(base_url=control.url) as guesser, httpx.AsyncClient(
            base_url=control.url, transport=httpx.AsyncHTTPTransport(local_address="127.0.0.2")) as elsewhere:
        for _ in range(session.LOGIN_ATTEMPTS):
            assert (await _try_password(guesser, "kma_guess")).status_code == 401
        throttled = await _try_password(guesser, "kma_guess")
        assert throttled.status_code == 429 and 0 < int(throttled.headers["retry-after"]) <= session.LOGIN_REFILL
        assert "Too many wrong tokens" in throttled.text
        assert (await _try_password(guesser, ADMIN)).status_code == 429  # not even the right one, for now
        assert (await _try_password(elsewhere, ADMIN)).status_code == 302  # another source is not held back
    refused = [r for r in caplog.records if r.getMessage() == "web login refused"]
    assert [r.fields["remote"] for r in refused] == ["127.0.0.1"]


async def test_a_port_in_other_digits_is_a_validation_message(control):
    async with _logged_in(control.url) as browser:
        token = _csrf(await browser.get("/gateways/new"))
        for port in ("²", "١٢٣", "8" * 20):
            page = await browser.post("/gateways/new", data={"csrf_token": token, "name": "gw", "wireguardPort": port})
            assert page.status_code == 400 and "1-65535" in page.text, port


async def test_a_gateways_page_shows_its_workers_and_the_list_only_the_gateway(control):
    gw = await control.create("gateways", name="gw")
    async with connect(control, gw["apiKey"], "gateway", endpoint="203.0.113.1:51821", worker=1):
        async with _logged_in(control.url) as browser:
            page = (await browser.get(f"/gateways/{gw['id']}")).text
            listing = (await browser.get("/gateways")).text
    assert re.search(r"Worker processes</dt><dd>2; #1\s+online at <span class=\"code-inline\">203.0.113.1:51821", page)
    assert "gw#1" not in listing


async def test_an_unknown_url_gets_a_page_for_a_browser_and_json_for_the_api(control):
    async with httpx.AsyncClient(base_url=control.url) as client:
        page = await client.get("/no/such/page", headers={"accept": "text/html,*/*;q=0.8"})
        assert page.status_code == 404 and "<h1>Not Found</h1>" in page.text
        assert page.headers["content-type"].startswith("text/html") and '"code"' not in page.text
        api = await client.get("/api/no-such-thing", headers={"accept": "text/html,*/*;q=0.8",
                                                              "authorization": f"Bearer {ADMIN}"})
        assert api.status_code == 404 and api.json()["code"] == "not_found"
        plain = await client.get("/no/such/page")  # a script that takes anything gets the API's JSON
        assert plain.status_code == 404 and plain.json()["code"] == "not_found"


async def test_the_tunnel_form_sets_the_access_policy(control):
    agent = await control.create("agents", name="home")
    tunnel = await control.create("tunnels", domain="lock.example.com", agentId=agent["id"], target="127.0.0.1:8080")
    async with _logged_in(control.url) as browser:
        page = await browser.get(f"/tunnels/{tunnel['id']}/edit")
        form = {"csrf_token": _csrf(page), "domain": "lock.example.com", "agentId": agent["id"],
                "target": "127.0.0.1:8080", "tlsMode": "acme", "enabled": "on", "accessMode": "password",
                "accessRules": "bypass 192.168.1.0/24\ndeny 10.0.0.0/8", "bypassPaths": "/caldav/"}
        missing = await browser.post(f"/tunnels/{tunnel['id']}/edit", data=form)
        assert missing.status_code == 400 and "access.password" in missing.text
        saved = await browser.post(f"/tunnels/{tunnel['id']}/edit", data={**form, "accessPassword": "long enough"})
        assert saved.status_code == 302
        access = (await control.api.get(f"/api/tunnels/{tunnel['id']}")).json()["access"]
        assert access["mode"] == "password" and access["passwordSet"] and access["bypassPaths"] == ["/caldav/"]
        assert access["rules"] == [{"action": "bypass", "cidr": "192.168.1.0/24"}, {"action": "deny", "cidr": "10.0.0.0/8"}]
        page = await browser.get(f"/tunnels/{tunnel['id']}/edit")
        assert "bypass 192.168.1.0/24" in page.text and "set: leave blank to keep it" in page.text
        await browser.post(f"/tunnels/{tunnel['id']}/edit", data={**form, "csrf_token": _csrf(page)})  # kept
        assert (await control.api.get(f"/api/tunnels/{tunnel['id']}")).json()["access"]["passwordSet"]


async def test_the_tunnel_page_makes_and_revokes_share_links_and_ends_sessions(control):
    agent = await control.create("agents", name="home")
    tunnel = await control.create("tunnels", domain="share.example.com", agentId=agent["id"], target="127.0.0.1:8080",
                                  access={"mode": "password", "password": "long enough"})
    async with _logged_in(control.url) as browser:
        page = await browser.get(f"/tunnels/{tunnel['id']}/edit")
        made = await browser.post(f"/tunnels/{tunnel['id']}/share-links",
                                  data={"csrf_token": _csrf(page), "note": "for Bob", "expiresInHours": "2"})
        assert made.status_code == 200 and "https://share.example.com/.kakuremichi/share/" in made.text
        link = (await control.api.get(f"/api/tunnels/{tunnel['id']}/share-links")).json()["items"][0]
        assert link["note"] == "for Bob" and not link["revoked"]
        revoked = await browser.post(f"/tunnels/{tunnel['id']}/share-links/{link['id']}/revoke",
                                     data={"csrf_token": _csrf(made)})
        assert revoked.status_code == 302
        assert (await control.api.get(f"/api/tunnels/{tunnel['id']}/share-links")).json()["items"][0]["revoked"]
        page = await browser.get(f"/tunnels/{tunnel['id']}/edit")
        assert "revoked" in page.text and "/.kakuremichi/share/" not in page.text  # the link is shown only once
        ended = await browser.post(f"/tunnels/{tunnel['id']}/revoke-sessions", data={"csrf_token": _csrf(page)})
        assert ended.status_code == 302


async def test_the_tunnel_page_adds_edits_drains_and_removes_backends(control):
    home, away = await control.create("agents", name="home"), await control.create("agents", name="away")
    tunnel = await control.create("tunnels", domain="lb.example.com", agentId=home["id"], target="127.0.0.1:8080")
    url = f"/tunnels/{tunnel['id']}/backends"

    async def stored() -> list[dict]:
        return (await control.api.get(f"/api/tunnels/{tunnel['id']}")).json()["backends"]

    async with _logged_in(control.url) as browser:
        page = await browser.get(f"/tunnels/{tunnel['id']}/edit")
        assert "Backends" in page.text and "10.1.0.2" in page.text and "unknown" in page.text
        added = await browser.post(url, data={"csrf_token": _csrf(page), "action": "add", "agentId": away["id"],
                                              "target": "127.0.0.1:9090", "weight": "3", "priority": "1"})
        assert added.status_code == 302
        first, second = await stored()
        assert (second["agentId"], second["address"], second["weight"], second["priority"]) == (away["id"],
                                                                                              "10.1.0.3", 3, 1)
        page = await browser.get(f"/tunnels/{tunnel['id']}/edit")
        await browser.post(url, data={"csrf_token": _csrf(page), "action": "drain", "backend": second["id"]})
        await browser.post(url, data={"csrf_token": _csrf(page), "action": "save", "backend": first["id"],
                                      "weight": "5", "priority": "0"})
        assert [(b["weight"], b["draining"]) for b in await stored()] == [(5, False), (3, True)]
        page = await browser.get(f"/tunnels/{tunnel['id']}/edit")
        assert "draining" in page.text and "Undrain" in page.text
        bad = await browser.post(url, data={"csrf_token": _csrf(page), "action": "save", "backend": first["id"],
                                            "weight": "lots"})
        assert bad.status_code == 400 and "backends" in bad.text
        await browser.post(url, data={"csrf_token": _csrf(page), "action": "remove", "backend": first["id"]})
        assert [b["id"] for b in await stored()] == [second["id"]]


async def test_the_tunnel_form_opens_a_tcp_port_after_logins_and_lists_the_grants(control):
    agent = await control.create("agents", name="home")
    web = await control.create("tunnels", domain="lock.example.com", agentId=agent["id"], target="127.0.0.1:8080",
                               access={"mode": "password", "password": "long enough"})
    await control.create("tunnels", domain="open.example.com", agentId=agent["id"], target="127.0.0.1:8081")
    ssh = await control.create("tunnels", protocol="tcp", agentId=agent["id"], target="127.0.0.1:22")
    async with _logged_in(control.url) as browser:
        page = await browser.get(f"/tunnels/{ssh['id']}/edit")
        assert f'<option value="{web["id"]}">lock.example.com</option>' in page.text
        assert "open.example.com</option>" not in page.text  # a public site has no login to open the port
        form = {"csrf_token": _csrf(page), "protocol": "tcp", "agentId": agent["id"], "target": "127.0.0.1:22",
                "tlsMode": "acme", "enabled": "on", "accessMode": "public", "loginTunnelId": web["id"], "loginGrantMinutes": "15"}
        saved = await browser.post(f"/tunnels/{ssh['id']}/edit", data=form)
        assert saved.status_code == 302, saved.text
        access = (await control.api.get(f"/api/tunnels/{ssh['id']}")).json()["access"]
        assert access["loginTunnelId"] == web["id"] and access["loginGrantMinutes"] == 15
        gw = await control.create("gateways", name="gw1")
        async with connect(control, gw["apiKey"], "gateway", endpoint="203.0.113.1:51820") as gateway:
            await gateway.send(protocol.AccessGranted(web["id"], "198.51.100.7"))
            await gateway.config()
        page = await browser.get(f"/tunnels/{ssh['id']}/edit")
        assert '<span class="code-inline">198.51.100.7</span> until' in page.text


async def test_the_tunnel_form_shows_and_keeps_the_per_source_connection_limit(control):
    agent = await control.create("agents", name="home")
    ssh = await control.create("tunnels", protocol="tcp", agentId=agent["id"], target="127.0.0.1:22",
                               access={"maxConnectionsPerSource": 4})
    form = {"protocol": "tcp", "agentId": agent["id"], "target": "127.0.0.1:22", "tlsMode": "acme", "enabled": "on",
            "accessMode": "public"}
    async with _logged_in(control.url) as browser:
        url = f"/tunnels/{ssh['id']}/edit"
        page = await browser.get(url)
        assert 'name="maxConnectionsPerSource" inputmode="numeric" value="4"' in page.text
        stored = lambda: control.api.get(f"/api/tunnels/{ssh['id']}")  # noqa: E731
        saved = await browser.post(url, data={**form, "csrf_token": _csrf(page), "maxConnectionsPerSource": "4",
                                              "description": "saved as shown"})
        assert saved.status_code == 302, saved.text
        assert (await stored()).json()["access"]["maxConnectionsPerSource"] == 4
        page = await browser.get(url)
        await browser.post(url, data={**form, "csrf_token": _csrf(page), "maxConnectionsPerSource": "9"})
        assert (await stored()).json()["access"]["maxConnectionsPerSource"] == 9
        page = await browser.get(url)
        bad = await browser.post(url, data={**form, "csrf_token": _csrf(page), "maxConnectionsPerSource": "0"})
        assert bad.status_code == 400 and "maxConnectionsPerSource" in bad.text
        page = await browser.get(url)
        await browser.post(url, data={**form, "csrf_token": _csrf(page), "maxConnectionsPerSource": ""})
        assert (await stored()).json()["access"]["maxConnectionsPerSource"] is None
