"""Single sign-on end to end: a real OpenID Provider (oidc-provider under node), control, two gateways, an
agent and an app, each its own process; headless chromium logs in through the provider and reaches the app."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest

pytest.importorskip("selenium", reason="selenium is in the test extra: pip install -e '.[test]'")

from selenium.webdriver.common.by import By  # noqa: E402

from tests.deployment import Deployment, free_port, wait_for  # noqa: E402
from tests.e2e.test_access import COUNTING_APP, count  # noqa: E402
from tests.webui.harness import browser_missing, fill, gone, start_browser, visible, wait  # noqa: E402

pytestmark = pytest.mark.skipif(browser_missing() is not None, reason=browser_missing() or "")
CLIENT_ID, CLIENT_SECRET = "kakuremichi", "client-secret-for-the-tests-0123456789"


@pytest.fixture(scope="module")
def sso(tmp_path_factory, oidc_provider_modules):
    tmp = tmp_path_factory.mktemp("sso")
    control_port, provider_port = free_port(), free_port()
    public_url = f"http://127.0.0.1:{control_port}"
    script = oidc_provider_modules / "provider.mjs"
    shutil.copy(Path(__file__).with_name("provider.mjs"), script)  # node resolves oidc-provider next to it
    log = tmp / "provider.log"
    provider = subprocess.Popen(["node", str(script), str(provider_port), CLIENT_ID, CLIENT_SECRET,
                                 f"{public_url}/auth/callback"], stdout=log.open("w"), stderr=subprocess.STDOUT)
    d = None
    try:
        wait_for(lambda: b"ready" in log.read_bytes() or provider.poll() is not None, 30, "the OpenID provider")
        assert provider.poll() is None, log.read_text()
        (tmp / "secret").write_text(CLIENT_SECRET)
        providers = tmp / "providers.json"
        providers.write_text(json.dumps([{"name": "test", "issuer": f"http://localhost:{provider_port}",
                                          "clientId": CLIENT_ID, "clientSecretFile": str(tmp / "secret")}]))
        d = Deployment(tmp, {"app": ("-c", COUNTING_APP)}, control_port=control_port,
                       control_args=("--public-url", public_url, "--oidc-providers-file", str(providers)))
        d.sso_tunnel = d.tunnel("app.localhost", "app", access={"mode": "sso", "allowedEmails": ["ann@example.com"]})
        for gateway in ("gw1", "gw2"):
            wait_for(lambda: (r := d.get(gateway, "app.localhost")) is not None and r.status_code == 401, 60,
                     f"the tunnel protected on {gateway}")
        yield d
    finally:
        if d is not None:
            d.close()
        provider.terminate()
        provider.wait(10)


@pytest.fixture
def browser():
    driver = start_browser()
    yield driver
    driver.quit()


def log_in_at_provider(browser, email: str) -> None:
    """oidc-provider's development login form, then its consent form."""
    visible(browser, "input[name=login]", 20)
    fill(browser, {"login": email, "password": "anything"})
    login = browser.find_element(By.CSS_SELECTOR, "button[type=submit]")
    login.click()
    wait(browser, gone(login), 20)  # else the consent wait may find this button
    visible(browser, "button[type=submit]", 20).click()  # consent


def tunnel_url(d: Deployment, gateway: str, path: str = "/") -> str:
    return f"http://app.localhost:{d.gateways[gateway][1]}{path}"


def test_a_browser_logs_in_through_the_provider_and_reaches_the_app_on_every_gateway(sso, browser):
    d = sso
    before = count(d, "app")
    browser.get(tunnel_url(d, "gw1", "/hello?x=1"))
    log_in_at_provider(browser, "ann@example.com")
    wait(browser, lambda b: b.current_url == tunnel_url(d, "gw1", "/hello?x=1") and '"path"' in b.page_source, 30)
    seen = json.loads(browser.find_element(By.TAG_NAME, "body").text)
    assert seen["path"] == "/hello?x=1"
    assert seen["headers"]["x-kakuremichi-email"] == "ann@example.com"
    assert seen["headers"]["x-kakuremichi-user"] == "ann@example.com"
    assert seen["headers"]["x-kakuremichi-groups"] == "family"
    assert count(d, "app") > before  # the page (and the browser's favicon request)
    # the session cookie (for app.localhost, whatever the port) is checked by the second gateway itself
    cookie = browser.get_cookie("kakuremichi_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Lax" and cookie["domain"] == "app.localhost"
    second = httpx.get(d.url("gw2", "/again"), headers={"host": "app.localhost",
                                                       "cookie": f"kakuremichi_session={cookie['value']}"})
    assert second.status_code == 200 and second.json()["headers"]["x-kakuremichi-email"] == "ann@example.com"


def test_a_user_outside_allowed_emails_gets_403_and_the_app_nothing(sso, browser):
    d = sso
    before = count(d, "app")
    browser.get(tunnel_url(d, "gw2", "/"))
    log_in_at_provider(browser, "mallory@example.com")
    wait(browser, lambda b: "Access denied" in b.page_source, 30)
    assert "mallory@example.com may not open app.localhost" in browser.page_source
    assert browser.get_cookie("kakuremichi_session") is None
    assert count(d, "app") == before


def test_control_sends_codes_to_the_tunnels_domain_only_and_refuses_a_forged_login(sso):
    d = sso
    login = f"http://127.0.0.1:{d.control_port}/auth/login"
    for elsewhere in ("http://evil.example/", "http://app.localhost.evil.example/", "javascript:alert(1)", "http://[",
                      "http://app.localhost:port/"):
        response = httpx.get(login, params={"tunnel": d.sso_tunnel["id"], "next": elsewhere})
        assert response.status_code == 400
    started = httpx.get(login, params={"tunnel": d.sso_tunnel["id"], "next": "http://app.localhost:1/"})
    assert started.status_code == 303 and "code_challenge_method=S256" in started.headers["location"]
    assert "nonce=" in started.headers["location"] and "state=" in started.headers["location"]
    callback = f"http://127.0.0.1:{d.control_port}/auth/callback"
    forged = httpx.get(callback, params={"state": "guessed", "code": "x"}, cookies=started.cookies)
    assert forged.status_code == 400 and "kakuremichi_oidc" in started.cookies
