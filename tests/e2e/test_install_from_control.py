"""The web UI's pip and pipx commands, run as printed (pip in a fresh venv): it installs kakuremichi from control's /dist (no
index has it), and the agent it starts serves a tunnel through a gateway. Dependencies come from a wheelhouse
(tests/wheelhouse.py) through pip's own environment variables, since no index may be reachable."""

from __future__ import annotations

import html
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap

import httpx
import pytest

from tests.deployment import ADMIN, Deployment, wait_for
from tests.wheelhouse import wheelhouse

APP = textwrap.dedent('''
    import sys
    from http.server import BaseHTTPRequestHandler, HTTPServer

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args): pass
        def do_GET(self):
            body = b"served by an agent installed from control"
            self.send_response(200)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = HTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
    print("ready", flush=True)
    server.serve_forever()
''')


def printed_command(control_url: str, command_id: str) -> str:
    """Create an agent through the web UI's form, as a person would; the command its page shows under
    `command_id`."""
    with httpx.Client(base_url=control_url) as browser:
        csrf = re.compile(r'name="csrf_token" value="([^"]+)"')
        login = browser.post("/login", data={"csrf_token": csrf.search(browser.get("/login").text).group(1),
                                             "password": ADMIN})
        assert login.status_code == 302
        page = browser.post("/agents/new", data={"name": "laptop",
                                                 "csrf_token": csrf.search(browser.get("/agents/new").text).group(1)})
        assert page.status_code == 201, page.text
    return html.unescape(re.search(rf'<pre id="{command_id}"[^>]*>(.*?)</pre>', page.text, re.S).group(1))


@pytest.fixture
def deployment(tmp_path):
    d = Deployment(tmp_path, apps={"app": ("-c", APP)}, gateways=("gw1",), agent=False)
    yield d
    d.close()


def installer_env(installer: str, tmp_path) -> tuple[dict[str, str], object]:
    """The environment the printed command runs in (our checkout hidden, pip pointed at the wheelhouse) and
    where the installer puts its venv."""
    env = {name: value for name, value in os.environ.items()
           if name != "PYTHONPATH" and not name.startswith("KAKUREMICHI_")}  # the venv's kakuremichi, not ours
    env.update(PIP_NO_INDEX="1", PIP_FIND_LINKS=str(wheelhouse()), PIP_DISABLE_PIP_VERSION_CHECK="1")
    if installer == "pip":
        venv = tmp_path / "venv"
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        bin_dir = venv / "bin"
        env["VIRTUAL_ENV"] = str(venv)
    else:
        if shutil.which("pipx") is None:
            pytest.skip("needs pipx (apt-get install pipx)")
        venv, bin_dir = tmp_path / "pipx" / "venvs" / "kakuremichi", tmp_path / "pipx" / "bin"
        env.update(PIPX_HOME=str(tmp_path / "pipx"), PIPX_BIN_DIR=str(bin_dir))
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    return env, venv


@pytest.mark.parametrize("installer", ["pip", "pipx"])
def test_the_printed_install_command_installs_from_control_and_its_agent_serves(deployment, tmp_path, installer):
    control_url = f"http://127.0.0.1:{deployment.control_port}"
    command = printed_command(control_url, f"install-{installer}")
    assert command.startswith(f"{installer} install {control_url}/dist/kakuremichi-") and "--api-key " not in command
    deployment.tunnel("app.localhost", "app", deployment.api.get("/api/agents").json()["items"][0]["id"])
    env, venv = installer_env(installer, tmp_path)
    home = tmp_path / "home"
    home.mkdir()
    log = tmp_path / "printed-command.log"
    with open(log, "w") as output:
        shell = subprocess.Popen(["bash", "-ec", command], cwd=home, env=env, stdout=output,
                                 stderr=subprocess.STDOUT, start_new_session=True)
    try:
        def served() -> bool:
            assert shell.poll() is None, log.read_text()[-3000:]
            response = deployment.get("gw1", "app.localhost")
            return response is not None and response.status_code == 200
        wait_for(served, 180, f"the agent installed by the printed command to serve (see {log})")
        assert deployment.get("gw1", "app.localhost").text == "served by an agent installed from control"
    finally:
        os.killpg(shell.pid, signal.SIGINT)
        shell.wait(20)
    installed = list((venv / "lib").glob("python3*/site-packages/kakuremichi/__init__.py"))
    assert installed, "kakuremichi was not installed into the venv"  # a copy, not an editable link to ours
    assert (home / "kakuremichi-agent.key").stat().st_mode & 0o077 == 0
