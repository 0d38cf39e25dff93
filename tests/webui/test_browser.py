"""The web UI in a real browser (Debian's headless chromium through chromedriver) against a control process."""

from __future__ import annotations

import pytest

pytest.importorskip("selenium", reason="selenium is in the test extra: pip install -e '.[test]'")

from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives import hashes  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402

from kakuremichi import __version__  # noqa: E402
from tests.gateway.testca import TestCA  # noqa: E402

from tests.webui.harness import (DESKTOP, PHONE, Control, browser_missing, create_agent, fill,  # noqa: E402
                                 local_app, log_in, serves, start_browser, submit, visible, wait)

pytestmark = pytest.mark.skipif(browser_missing() is not None, reason=browser_missing() or "")


@pytest.fixture(scope="module")
def control(tmp_path_factory):
    ctl = Control(tmp_path_factory.mktemp("webui"))
    yield ctl
    ctl.close()


@pytest.fixture(scope="module")
def browser():
    driver = start_browser()
    yield driver
    driver.quit()


@pytest.fixture
def admin(browser, control):
    """The browser, logged in, at desktop size."""
    browser.set_window_size(*DESKTOP)
    log_in(browser, control)
    return browser


CUT_OFF = """return [...document.querySelectorAll('body *')]
    .filter(e => { const r = e.getBoundingClientRect(); return r.width > 1 && r.right > innerWidth + 0.5; })
    .map(e => e.outerHTML.slice(0, 80));"""


def text(browser) -> str:
    return browser.find_element(By.TAG_NAME, "body").text


def test_wrong_password_is_refused(browser, control):
    browser.delete_all_cookies()
    browser.get(control.url + "/agents")
    assert browser.current_url.startswith(control.url + "/login")
    log_in(browser, control, password="kma_not-the-token")
    assert "That is not the admin token" in visible(browser, "#login-error").text
    assert browser.find_element(By.ID, "password").get_attribute("aria-invalid") == "true"
    browser.get(control.url + "/agents")
    assert browser.current_url.startswith(control.url + "/login")


def test_login_shows_the_empty_state_of_a_new_installation(browser, control):
    browser.delete_all_cookies()
    browser.get(control.url + "/tunnels")
    log_in(browser, control)
    assert browser.current_url == control.url + "/tunnels"  # back where the login was asked for
    assert "No tunnels yet" in text(browser) and "add an agent" in text(browser)
    browser.find_element(By.LINK_TEXT, "Overview").click()
    assert "Get started" in text(browser) and "Add a gateway" in text(browser)
    browser.find_element(By.LINK_TEXT, "Agents").click()
    assert "No agents yet" in text(browser)
    assert browser.find_element(By.LINK_TEXT, "Agents").get_attribute("aria-current") == "page"


def test_agent_key_shown_once_and_agent_goes_online_live(admin, control):
    agent_id, key = create_agent(admin, control, "laptop")
    assert key.startswith("agt_") and len(key) > 40
    commands = admin.find_element(By.ID, "install-pip").text
    assert f"(umask 077 && echo {key} > kakuremichi-agent.key)" in commands  # never on a command line
    assert f"kakuremichi agent --control-url {control.url} --api-key-file kakuremichi-agent.key" in commands
    assert f"pip install {control.url}/dist/kakuremichi-{__version__}-py3-none-any.whl" in commands  # from control
    assert f"pipx install {control.url}/dist/" in admin.find_element(By.ID, "install-pipx").text
    docker = admin.find_element(By.ID, "install-docker").text
    assert f"echo KAKUREMICHI_API_KEY={key} > kakuremichi-agent.env" in docker and "--env-file" in docker
    assert "--api-key " not in commands + docker and "-e KAKUREMICHI_API_KEY" not in docker
    admin.find_element(By.CSS_SELECTOR, "[data-copy='api-key']").click()
    wait(admin, lambda b: b.find_element(By.CSS_SELECTOR, "[data-copy='api-key']").text == "Copied")

    admin.get(f"{control.url}/agents/{agent_id}")
    assert key not in admin.page_source and "agt_YOUR_KEY" in admin.page_source  # shown once, never again

    admin.get(control.url + "/agents")
    badge = admin.find_element(By.CSS_SELECTOR, f"[data-live='agent-{agent_id}'][data-field='status']")
    assert badge.text == "offline"
    admin.execute_script("window.notReloaded = true")
    agent = control.spawn("agent", key)
    try:
        wait(admin, lambda b: badge.text == "online", timeout=20)
        assert admin.execute_script("return window.notReloaded") is True
        assert "online" in badge.get_attribute("class")
        assert admin.find_element(By.ID, "announcer").text == "laptop is now online"
        last_seen = admin.find_element(By.CSS_SELECTOR, f"[data-live='agent-{agent_id}'][data-field='lastSeen']")
        assert last_seen.text == "now"
    finally:
        agent.stop()
    wait(admin, lambda b: badge.text == "offline", timeout=20)
    assert admin.execute_script("return window.notReloaded") is True


def test_connected_gateways_and_traffic_appear_live(admin, control):
    gateway_key = control.api.post("/api/gateways", json={"name": "gw-live"}).json()["apiKey"]
    agent = control.api.post("/api/agents", json={"name": "agent-live"}).json()
    app, app_port = local_app()
    gateway, http_port = control.gateway(gateway_key)
    processes = [app, gateway, control.spawn("agent", agent["apiKey"])]
    try:
        control.api.post("/api/tunnels", json={"domain": "live.example.com", "agentId": agent["id"],
                                               "target": f"127.0.0.1:{app_port}", "tlsMode": "off"})
        admin.get(control.url + "/agents")
        admin.execute_script("window.notReloaded = true")
        field = f"[data-live='agent-{agent['id']}'][data-field='{{}}']"
        wait(admin, lambda b: serves(http_port, "live.example.com", "/bytes/300000"), timeout=30)
        wait(admin, lambda b: b.find_element(By.CSS_SELECTOR, field.format("peers")).text == "1 of 1: gw-live")
        wait(admin, lambda b: "↑ 3" in b.find_element(By.CSS_SELECTOR, field.format("traffic")).text)  # ≥ 300 kB
        assert admin.execute_script("return window.notReloaded") is True
        admin.find_element(By.LINK_TEXT, "agent-live").click()
        peers = admin.find_element(By.XPATH, "//h3[normalize-space()='Gateways']/following-sibling::table").text
        assert "gw-live" in peers and "connected" in peers
    finally:
        for process in reversed(processes):
            process.stop()
        control.api.delete(f"/api/agents/{agent['id']}")


def test_tunnel_form_shows_validation_next_to_fields_then_edit_and_delete(admin, control):
    agent_id, _ = create_agent(admin, control, "web-server")
    admin.get(control.url + "/tunnels/new")
    fill(admin, {"domain": "not a domain", "target": "nohost"})
    submit(admin, "Add tunnel")
    assert "must be a host name" in visible(admin, "#f-domain-error").text or \
        "not a valid host name" in admin.find_element(By.ID, "f-domain-error").text
    assert "host:port" in admin.find_element(By.ID, "f-target-error").text
    domain = admin.find_element(By.ID, "f-domain")
    assert domain.get_attribute("aria-invalid") == "true"
    assert "f-domain-error" in domain.get_attribute("aria-describedby")
    assert admin.switch_to.active_element == domain  # focus on the first field to fix
    assert domain.get_attribute("value") == "not a domain"  # what was typed is kept

    fill(admin, {"domain": "App.Example.com", "target": "localhost:8080"})
    admin.find_element(By.CSS_SELECTOR, f"#f-agentId option[value='{agent_id}']").click()
    submit(admin, "Add tunnel")
    assert admin.current_url == control.url + "/tunnels"
    row = admin.find_element(By.XPATH, "//tr[.//a[normalize-space()='app.example.com']]")
    assert "web-server" in row.text and "localhost:8080" in row.text

    row.find_element(By.LINK_TEXT, "app.example.com").click()
    fill(admin, {"target": "HTTP://127.0.0.1:9000/"})
    admin.find_element(By.ID, "f-enabled").click()
    submit(admin, "Save")
    row = admin.find_element(By.XPATH, "//tr[.//a[normalize-space()='app.example.com']]")
    assert "127.0.0.1:9000" in row.text and "http" not in row.text and "disabled" in row.text  # canonical form
    tunnel = control.api.get("/api/tunnels").json()["items"][0]
    assert tunnel["target"] == "127.0.0.1:9000" and tunnel["enabled"] is False

    row.find_element(By.LINK_TEXT, "app.example.com").click()
    admin.find_element(By.LINK_TEXT, "Delete").click()
    assert "Delete tunnel app.example.com?" in text(admin)
    submit(admin, "Delete")
    assert "No tunnels yet" in text(admin)
    assert control.api.get("/api/tunnels").json()["total"] == 0


def test_edit_rotate_and_delete_an_agent(admin, control):
    agent_id, key = create_agent(admin, control, "old-name")
    admin.get(f"{control.url}/agents/{agent_id}/edit")
    fill(admin, {"name": "laptop"})  # taken by an earlier test
    submit(admin, "Save")
    assert admin.find_element(By.ID, "f-name-error").text == "already in use"
    fill(admin, {"name": "new name"})
    submit(admin, "Save")
    assert admin.find_element(By.TAG_NAME, "h1").text.startswith("new name")

    admin.find_element(By.LINK_TEXT, "Rotate key…").click()
    assert "stops working" in text(admin) and key[:8] not in admin.page_source  # nothing rotated yet
    submit(admin, "Rotate key")
    rotated = admin.find_element(By.ID, "api-key").get_attribute("value")
    assert rotated.startswith("agt_") and rotated != key

    admin.find_element(By.LINK_TEXT, "Delete").click()
    submit(admin, "Delete")
    assert admin.current_url == control.url + "/agents"
    assert "new name" not in text(admin)
    assert control.api.get(f"/api/agents/{agent_id}").status_code == 404


def test_gateway_form_uses_the_api_validation(admin, control):
    admin.get(control.url + "/gateways/new")
    fill(admin, {"name": "gw1", "wireguardPort": "70000"})
    submit(admin, "Add gateway")
    assert "1-65535" in admin.find_element(By.ID, "f-wireguardPort-error").text
    fill(admin, {"wireguardPort": "51821"})
    submit(admin, "Add gateway")
    assert admin.find_element(By.ID, "api-key").get_attribute("value").startswith("gtw_")
    docker = admin.find_element(By.ID, "install-docker").text
    assert "-p 51821:51821/udp" in docker and "-e KAKUREMICHI_WORKERS=1" in docker
    assert f"{control.url}/dist/kakuremichi-{__version__}-image.tar" in docker
    assert f"kakuremichi:{__version__} gateway" in docker


def test_list_says_when_items_were_added_elsewhere(admin, control):
    admin.get(control.url + "/gateways")
    notice = admin.find_element(By.ID, "list-changed")
    assert not notice.is_displayed()
    assert control.api.post("/api/gateways", json={"name": "added-by-api"}).status_code == 201
    wait(admin, lambda b: notice.is_displayed())
    notice.find_element(By.LINK_TEXT, "Reload the list").click()
    wait(admin, lambda b: "added-by-api" in text(b))
    assert not admin.find_element(By.ID, "list-changed").is_displayed()


@pytest.mark.parametrize("path", ["/", "/gateways", "/agents", "/tunnels", "/tunnels/new", "/agents/new", "agent"])
def test_pages_fit_a_phone_screen(admin, control, path):
    if path == "agent":
        agent_id, _ = create_agent(admin, control, "phone-check")  # the widest page: install commands
        control.api.post("/api/tunnels", json={"domain": "a-rather-long-subdomain-name.example.com",
                                               "agentId": agent_id, "target": "localhost:8080"})
        path = f"/agents/{agent_id}"
    admin.set_window_size(*PHONE)
    admin.get(control.url + path)
    width = admin.execute_script("return window.innerWidth")
    assert width <= PHONE[0]
    assert admin.execute_script("return document.documentElement.scrollWidth") <= width
    assert admin.execute_script(CUT_OFF) == []  # nor anything clipped by a container that hides overflow
    assert admin.find_element(By.LINK_TEXT, "Tunnels").is_displayed()  # navigation stays reachable


def test_tunnels_show_their_certificate_status(admin, control):
    agent = control.api.post("/api/agents", json={"name": "cert-agent"}).json()
    gateway = control.api.post("/api/gateways", json={"name": "cert-gw"}).json()
    tunnels = {"valid.example.com": "acme", "soon.example.com": "acme", "new.example.com": "acme",
               "old.example.com": "acme", "plain.example.com": "off"}
    for domain, mode in tunnels.items():
        control.api.post("/api/tunnels", json={"domain": domain, "agentId": agent["id"], "target": "localhost:8080",
                                               "tlsMode": mode})
    ca = TestCA()
    valid_pem, valid_key = ca.issue("valid.example.com", "www.valid.example.com", days=90)
    control.upload_certificate(gateway["apiKey"], "valid.example.com", valid_pem, valid_key)
    control.upload_certificate(gateway["apiKey"], "soon.example.com", *ca.issue("soon.example.com", days=5))
    control.store_certificate("old.example.com", *ca.issue("old.example.com", days=0))  # expired an hour ago
    try:
        admin.get(control.url + "/tunnels")
        badges = {b.get_attribute("data-certificate"): b for b in admin.find_elements(By.CSS_SELECTOR,
                                                                                       "[data-certificate]")}
        badges = {domain: b for domain, b in badges.items() if domain in tunnels}  # not earlier tests' tunnels
        leaf = x509.load_pem_x509_certificate(valid_pem)
        assert {domain: (b.get_attribute("textContent"), b.get_attribute("class")) for domain, b in badges.items()} == {
            "valid.example.com": (f"Certificate valid until {leaf.not_valid_after_utc:%Y-%m-%d}",
                                  "badge badge-cert-valid"),
            "soon.example.com": ("Certificate expiring in 4 days", "badge badge-cert-warning"),  # 4 days 23 hours
            "new.example.com": ("Certificate none yet", "badge badge-cert-none"),
            "old.example.com": ("Certificate expired", "badge badge-cert-expired"),
        }  # "Certificate" is for screen readers; no badge for plain.example.com, whose TLS is off
        colours = {domain: b.value_of_css_property("color") for domain, b in badges.items()}
        assert len({colours["valid.example.com"], colours["soon.example.com"], colours["old.example.com"]}) == 3

        admin.find_element(By.LINK_TEXT, "valid.example.com").click()
        section = admin.find_element(By.XPATH, "//section[.//h2[normalize-space()='Certificate']]").text
        assert "kakuremichi test CA" in section and "valid.example.com, www.valid.example.com" in section
        assert f"{leaf.not_valid_after_utc:%Y-%m-%d %H:%M} UTC" in section
        fingerprint = admin.find_element(By.ID, "certificate-fingerprint").text
        assert fingerprint == leaf.fingerprint(hashes.SHA256()).hex(":").upper()
        assert valid_key.decode().splitlines()[1] not in admin.page_source
        admin.set_window_size(*PHONE)  # the long fingerprint wraps instead of widening the page
        assert admin.execute_script("return document.documentElement.scrollWidth") <= PHONE[0]
        admin.set_window_size(*DESKTOP)

        admin.get(control.url + "/tunnels")
        admin.find_element(By.LINK_TEXT, "new.example.com").click()
        assert "None yet" in admin.find_element(By.XPATH, "//section[.//h2[normalize-space()='Certificate']]").text
    finally:
        control.api.delete(f"/api/agents/{agent['id']}")
        control.api.delete(f"/api/gateways/{gateway['id']}")


def test_logout_ends_the_session(admin, control):
    submit(admin, "Log out")
    assert admin.current_url.startswith(control.url + "/login")
    admin.get(control.url + "/agents")
    assert admin.current_url.startswith(control.url + "/login")
