"""`kakuremichi agent --discover docker` against podman's Docker-compatible API (`podman system service`), every
component a process: a labelled container becomes a tunnel that serves its page through the gateway, and goes
when the container stops; a container whose domain is not delegated to the agent is refused."""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import tarfile
import tempfile

import pytest

from kakuremichi.agent.docker import tunnel_of
from kakuremichi.protocol import DeclaredTunnel
from tests.deployment import Deployment, wait_for

PAGE = b"hello from a container\n"
IMAGE = "localhost/kakuremichi-test-busybox"


class Podman:
    """podman as root on storage of its own under `root` (vfs: no mounts left behind), with runc, cgroupfs and
    ulimits this machine allows, and its Docker-compatible API service on `root/podman.sock`."""

    def __init__(self, root) -> None:
        nofile = min(resource.getrlimit(resource.RLIMIT_NOFILE)[1], 1 << 16)
        nproc = min(resource.getrlimit(resource.RLIMIT_NPROC)[1], 8192)  # runc may not raise it further here
        (root / "containers.conf").write_text(
            f'[containers]\ndefault_ulimits = ["nofile={nofile}:{nofile}", "nproc={nproc}:{nproc}"]\n'
            '[engine]\nruntime = "runc"\ncgroup_manager = "cgroupfs"\nevents_logger = "file"\n')
        self.env = dict(os.environ, CONTAINERS_CONF=str(root / "containers.conf"))
        self.runroot = tempfile.mkdtemp(prefix="km-podman-")  # podman refuses a runroot longer than 50 characters
        self.base = ["podman", "--root", str(root / "storage"), "--runroot", self.runroot, "--storage-driver", "vfs"]
        self.socket = root / "podman.sock"
        self.service = subprocess.Popen([*self.base, "system", "service", "--time=0", f"unix://{self.socket}"],
                                        env=self.env, stdout=subprocess.DEVNULL, stderr=open(root / "podman-service.log", "w"))
        wait_for(self.socket.exists, 30, "podman's API socket")

    def __call__(self, *args: str) -> str:
        done = subprocess.run([*self.base, *args], env=self.env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"podman {' '.join(args[:2])}: {done.stderr[-2000:]}"
        return done.stdout.strip()

    def close(self) -> None:
        subprocess.run([*self.base, "rm", "--all", "--force", "--time", "0"], env=self.env, capture_output=True,
                       timeout=120)
        self.service.terminate()
        self.service.wait(30)
        shutil.rmtree(self.runroot, ignore_errors=True)


@pytest.fixture
def podman(tmp_path):
    if shutil.which("podman") is None:
        pytest.skip("needs podman (apt-get install podman)")
    busybox = shutil.which("busybox")
    if busybox is None:
        pytest.skip("needs a static busybox for the container's web server (apt-get install busybox-static)")
    if os.geteuid() != 0:
        pytest.skip("runs podman as root")
    podman = Podman(tmp_path)
    try:
        image = tmp_path / "busybox.tar"  # an image made here: no registry is needed
        with tarfile.open(image, "w") as tar:
            tar.add(busybox, "bin/busybox")
            (tmp_path / "index.html").write_bytes(PAGE)
            tar.add(tmp_path / "index.html", "www/index.html")
        podman("import", str(image), IMAGE)
        yield podman
    finally:
        podman.close()


def web_container(podman: Podman, name: str, domain: str) -> str:
    return podman("run", "-d", "--name", name, "--label", f"kakuremichi.domain={domain}", "--label",
                  "kakuremichi.tls-mode=off", "-p", "127.0.0.1::8080", IMAGE, "/bin/busybox", "httpd", "-f", "-p",
                  "8080", "-h", "/www")


def test_a_labelled_container_is_served_while_it_runs(podman, tmp_path):
    d = Deployment(tmp_path, apps={}, gateways=("gw1",), agent=False)
    try:
        agent = d.api.post("/api/agents", json={"name": "home", "metadata": {"delegatedDomains": ["home.test"]}}).json()
        web_container(podman, "web", "web.home.test")
        web_container(podman, "stray", "stray.example.net")
        d.spawn("kakuremichi.agent", "--control-url", f"http://127.0.0.1:{d.control_port}", "--api-key",
                agent["apiKey"], "--data-dir", str(tmp_path / "agent"), "--heartbeat-interval", d.heartbeat,
                "--discover", "docker", "--docker-socket", str(podman.socket))

        def page() -> bytes | None:
            response = d.get("gw1", "web.home.test")
            return response.content if response is not None and response.status_code == 200 else None

        wait_for(lambda: page() == PAGE, 60, "the container's tunnel")
        log = tmp_path / "agentagent.log"
        wait_for(lambda: "stray.example.net" in log.read_text(), 20, "the refusal")
        assert "control refused a declared tunnel" in log.read_text()
        tunnels = d.api.get("/api/tunnels").json()["items"]
        assert [t["domain"] for t in tunnels] == ["web.home.test"] and tunnels[0]["target"].startswith("127.0.0.1:")

        podman("stop", "--time", "0", "web")
        wait_for(lambda: not d.api.get("/api/tunnels").json()["items"], 30, "the tunnel to go with the container")
        assert d.get("gw1", "web.home.test").status_code == 404
    finally:
        d.close()


@pytest.mark.parametrize("container, expected", [
    ({"Labels": {"kakuremichi.domain": "a.home.test"}, "Ports": [{"IP": "0.0.0.0", "PrivatePort": 80,
                                                                  "PublicPort": 8081, "Type": "tcp"}]},
     DeclaredTunnel("a.home.test", "127.0.0.1:8081")),
    ({"Labels": {"kakuremichi.domain": "a.home.test", "kakuremichi.port": "80", "kakuremichi.force-https": "true"},
      "Ports": [{"PrivatePort": 80, "Type": "tcp"}, {"PrivatePort": 443, "Type": "tcp"}],
      "NetworkSettings": {"Networks": {"web": {"IPAddress": "172.18.0.5"}}}},
     DeclaredTunnel("a.home.test", "172.18.0.5:80", force_https=True)),
    ({"Labels": {"kakuremichi.domain": "a.home.test", "kakuremichi.target": "https://db.lan:8443"}},
     DeclaredTunnel("a.home.test", "https://db.lan:8443")),
])
def test_labels_give_the_target_the_agent_reaches(container, expected):
    assert tunnel_of(container) == expected


@pytest.mark.parametrize("labels, ports, message", [
    ({}, [{"PrivatePort": 80}, {"PrivatePort": 443}], "it has 2 TCP ports: say which with the label kakuremichi.port"),
    ({"kakuremichi.port": "http"}, [], "label kakuremichi.port: 'http' is not a port number"),
    ({"kakuremichi.port": "80"}, [{"PrivatePort": 80}], "port 80 is neither published nor on a network"),
    ({"kakuremichi.tls-mode": "maybe", "kakuremichi.target": "localhost:1"}, [],
     "label kakuremichi.tls-mode: Invalid enum value 'maybe'"),
    ({"kakuremichi.target": "localhost:99999"}, [], "label kakuremichi.target: 'localhost:99999': the port"),
])
def test_unusable_labels_say_which(labels, ports, message):
    with pytest.raises(ValueError) as raised:
        tunnel_of({"Labels": {"kakuremichi.domain": "a.home.test", **labels}, "Ports": ports})
    assert str(raised.value).startswith(message)

