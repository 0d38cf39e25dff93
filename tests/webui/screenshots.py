"""Screenshots of the web UI for the README: `python -m tests.webui.screenshots [OUTPUT_DIR]`.

Runs the real thing — control, a gateway and an agent as processes, a small local app, traffic through
the tunnel — and photographs the main pages in headless chromium (default output: docs/screenshots).
"""

from __future__ import annotations

import re
import sys
import tempfile
from pathlib import Path

from selenium.webdriver.common.by import By

from tests.deployment import wait_for
from tests.gateway.testca import TestCA
from tests.webui.harness import (DESKTOP, PHONE, Control, create_agent, fill, local_app, log_in, serves, start_browser,
                                 submit)

ROOT = Path(__file__).resolve().parents[2]


def shoot(browser, path: Path, size: tuple[int, int] = DESKTOP) -> None:
    """The whole page (up to twice the window height) at `size`'s width."""
    browser.set_window_size(*size)
    height = browser.execute_script("return document.documentElement.scrollHeight")
    browser.set_window_size(size[0], min(max(size[1], height), 2 * size[1]))
    browser.save_screenshot(str(path))
    print(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")


def megabytes(text: str) -> float:
    """The largest "N MB" figure in `text`: the 4 MB sent through the tunnel, once a heartbeat reported it."""
    return max((float(figure) for figure in re.findall(r"([0-9.]+) MB", text)), default=0.0)


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        control = Control(Path(tmp))
        app, app_port = local_app()
        processes = [app]
        browser = start_browser()
        try:
            browser.get(control.url + "/login")
            shoot(browser, out / "login.png")
            log_in(browser, control)
            shoot(browser, out / "overview-empty.png")

            browser.get(control.url + "/gateways/new")
            fill(browser, {"name": "gw-tokyo"})
            submit(browser, "Add gateway")
            gateway_key = browser.find_element(By.ID, "api-key").get_attribute("value")
            gateway, http_port = control.gateway(gateway_key)
            processes.append(gateway)

            agent_id, agent_key = create_agent(browser, control, "home-server")
            shoot(browser, out / "agent-key.png")
            processes.append(control.spawn("agent", agent_key))
            create_agent(browser, control, "office-nas")

            for domain, target in (("app.example.com", f"127.0.0.1:{app_port}"),
                                   ("grafana.example.com", "localhost:3000"),
                                   ("nas.example.com", "http://192.168.1.20:5000")):
                browser.get(control.url + "/tunnels/new")
                fill(browser, {"domain": domain, "target": target})
                if domain.startswith("nas"):
                    browser.find_element(By.XPATH, "//option[normalize-space()='office-nas']").click()
                submit(browser, "Add tunnel")

            wait_for(lambda: serves(http_port, "app.example.com"), 30, "the tunnel to serve")
            for _ in range(20):
                assert serves(http_port, "app.example.com", "/bytes/200000")
            for page in ("agents", "gateways"):
                browser.get(f"{control.url}/{page}")
                wait_for(lambda: megabytes(browser.find_element(By.TAG_NAME, "tbody").text) >= 4, 15, "traffic to show")
                shoot(browser, out / f"{page}.png")
            control.upload_certificate(gateway_key, "app.example.com",  # as if its ACME order had succeeded
                                       *TestCA().issue("app.example.com", days=90))
            browser.get(control.url + "/tunnels")
            shoot(browser, out / "tunnels.png")

            browser.get(control.url + "/tunnels/new")
            fill(browser, {"domain": "https://shop.example.com/", "target": "localhost"})
            submit(browser, "Add tunnel")
            shoot(browser, out / "tunnel-form-error.png")

            browser.get(control.url + "/agents")
            shoot(browser, out / "phone-agents.png", PHONE)
            browser.get(f"{control.url}/agents/{agent_id}")
            shoot(browser, out / "phone-agent.png", PHONE)
        finally:
            browser.quit()
            for process in reversed(processes):
                process.stop()
            control.close()


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs" / "screenshots")
