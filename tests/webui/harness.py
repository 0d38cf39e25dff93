"""A control process and a headless Debian chromium driven by selenium, shared by the browser tests and
the screenshot script."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import httpx
import trio
from cryptography import x509
from pony.orm import db_session
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import WebDriverWait
from trio_websocket import open_websocket_url

from kakuremichi import protocol
from kakuremichi.control.models import open_database
from tests.control.conftest import WsClient, public_key
from tests.deployment import Process, free_port, wait_for
from tests.e2e.test_tunnel_end_to_end import APP

ADMIN = "kma_webui-admin-token-0123456789abcdef0123456789"
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
DESKTOP = (1280, 900)
PHONE = (375, 740)


def browser_missing() -> str | None:
    """Why the browser tests cannot run here, or None."""
    for path in (CHROMIUM, CHROMEDRIVER):
        if not shutil.which(path):
            return f"{path} not installed (apt-get install chromium chromium-driver)"
    return None


class Control:
    """`python -m kakuremichi.control` on a free loopback port, with a REST client for setup and checks."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.url = f"http://127.0.0.1:{free_port()}"
        self.process = Process("-m", "kakuremichi.control", "--listen", self.url.removeprefix("http://"),
                               "--data-dir", str(tmp / "control"), "--admin-token", ADMIN,
                               "--heartbeat-interval", "2", log=tmp / "control.log")
        self.api = httpx.Client(base_url=self.url, headers={"authorization": f"Bearer {ADMIN}"}, timeout=10)
        wait_for(self._healthy, 15, "control to start")

    def _healthy(self) -> bool:
        try:
            return self.api.get("/healthz").status_code == 200
        except httpx.TransportError:
            return False

    def spawn(self, component: str, api_key: str, *args: str) -> Process:
        """A real agent/gateway process connected to this control."""
        name = f"{component}-{free_port()}"
        return Process("-m", f"kakuremichi.{component}", "--control-url", self.url, "--api-key", api_key,
                       "--data-dir", str(self.tmp / name), "--heartbeat-interval", "1", *args, log=self.tmp / f"{name}.log")

    def gateway(self, api_key: str) -> tuple[Process, int]:
        """A real gateway on loopback (plain HTTP); its process and HTTP port."""
        http_port = free_port()
        process = self.spawn("gateway", api_key, "--public-host", "127.0.0.1", "--listen-host", "127.0.0.1",
                             "--http-port", str(http_port), "--https-port", "0", "--acme-directory", "off", "--workers", "1",
                             "--wireguard-port", str(free_port(socket.SOCK_DGRAM)))
        return process, http_port

    def close(self) -> None:
        self.process.stop()
        self.api.close()

    def upload_certificate(self, gateway_key: str, domain: str, chain_pem: bytes, key_pem: bytes) -> None:
        """What a gateway does once its ACME order succeeds: hand the certificate to control to keep."""
        not_after = x509.load_pem_x509_certificate(chain_pem).not_valid_after_utc
        trio.run(self._upload, gateway_key, protocol.CertificateUpload(domain, chain_pem.decode(), key_pem.decode(),
                                                                       not_after))

    async def _upload(self, gateway_key: str, upload: protocol.CertificateUpload) -> None:
        async with open_websocket_url(self.url.replace("http://", "ws://") + "/ws") as ws:
            gateway = WsClient(ws)
            await gateway.send(protocol.Auth(gateway_key, "gateway", public_key()))
            assert isinstance(await gateway.receive(5), protocol.AuthSuccess)
            await gateway.send(upload)
            await gateway.send(protocol.Ping())
            with trio.fail_after(5):  # answered in order: the upload is stored once the pong arrives
                while not isinstance(protocol.decode(await ws.get_message()), protocol.Pong):
                    pass

    def store_certificate(self, domain: str, chain_pem: bytes, key_pem: bytes) -> None:
        """Put a certificate in control's database as an upload long ago would have left it (control refuses
        to take an expired one, but a kept one expires all the same)."""
        leaf = x509.load_pem_x509_certificate(chain_pem)
        db = open_database("sqlite:///" + str(self.tmp / "control" / "control.sqlite"))
        try:
            with db_session:
                db.Certificate(domain=domain, chain_pem=chain_pem.decode(), key_pem=key_pem.decode(),
                               serial=format(leaf.serial_number, "x"), issuer=leaf.issuer.rfc4514_string(),
                               not_before=leaf.not_valid_before_utc.replace(tzinfo=None),
                               not_after=leaf.not_valid_after_utc.replace(tzinfo=None), uploaded_by="test")
        finally:
            db.disconnect()


def local_app() -> tuple[Process, int]:
    """A small HTTP app only the agent is meant to reach (GET /bytes/N sends N bytes); its process and port."""
    port = free_port()
    return Process("-c", APP, str(port), "app", ready="ready"), port


def serves(http_port: int, domain: str, path: str = "/") -> bool:
    """Whether the gateway on `http_port` answers 200 for `domain` (through the tunnel)."""
    try:
        return httpx.get(f"http://127.0.0.1:{http_port}{path}", headers={"host": domain}, timeout=5).status_code == 200
    except httpx.TransportError:
        return False


def start_browser() -> webdriver.Chrome:
    options = Options()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--disable-extensions", "--hide-scrollbars", "--force-device-scale-factor=1",
                     f"--window-size={DESKTOP[0]},{DESKTOP[1]}"):
        options.add_argument(argument)
    return webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))


def wait(browser: webdriver.Chrome, condition, timeout: float = 10):
    return WebDriverWait(browser, timeout, poll_frequency=0.05).until(condition)


def gone(element):
    """A wait condition: `element` left the page. Selenium's staleness_of knows only StaleElementReference;
    mid-navigation Chromium answers "node does not belong to the document" instead, as another error."""
    def left(_) -> bool:
        try:
            element.is_enabled()
        except WebDriverException:
            return True
        return False
    return left


def visible(browser: webdriver.Chrome, css: str, timeout: float = 10):
    return wait(browser, expected_conditions.visibility_of_element_located((By.CSS_SELECTOR, css)), timeout)


def fill(browser: webdriver.Chrome, fields: dict[str, str]) -> None:
    """Type into form fields by name, replacing what they held."""
    for name, value in fields.items():
        element = browser.find_element(By.NAME, name)
        element.clear()
        element.send_keys(value)


def submit(browser: webdriver.Chrome, label: str) -> None:
    """Click the submit button called `label` and wait until the next page has loaded."""
    browser.execute_script("window.leaving = true")
    browser.find_element(By.XPATH, f"//button[normalize-space()='{label}']").click()
    WebDriverWait(browser, 10, poll_frequency=0.05, ignored_exceptions=(WebDriverException,)).until(
        lambda b: b.execute_script("return !window.leaving && document.readyState === 'complete'"))


def log_in(browser: webdriver.Chrome, control: Control, password: str = ADMIN) -> None:
    """Log in through the form (the one on screen, when a page sent the browser there); no-op when logged in."""
    if not browser.current_url.startswith(control.url + "/login"):
        browser.get(control.url + "/login")
        if not browser.current_url.startswith(control.url + "/login"):
            return
    fill(browser, {"password": password})
    submit(browser, "Log in")


def create_agent(browser: webdriver.Chrome, control: Control, name: str) -> tuple[str, str]:
    """Add an agent through the form; its id and the API key the page shows once."""
    browser.get(control.url + "/agents/new")
    fill(browser, {"name": name})
    submit(browser, "Add agent")
    key = browser.find_element(By.ID, "api-key").get_attribute("value")
    agent_id = next(a["id"] for a in control.api.get("/api/agents").json()["items"] if a["name"] == name)
    return agent_id, key
