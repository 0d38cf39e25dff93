"""The container image for real: built with podman from the Containerfile on a Debian base made here, and
compose.yaml's control, gateway, agent and demo app run from it; a request to the gateway's port reaches the
demo app through the tunnel. Skips, naming the package, where podman cannot run."""

from __future__ import annotations

import hashlib
import json
import time

import httpx
import pytest

from tests.container.podman import (IMAGE_UID, Pod, base_image, build_image, compose_services, require_podman,
                                    require_runnable)
from tests.deployment import Deployment
from tests.wheelhouse import wheelhouse

# Run inside the pod (it has only a loopback network): control's REST API with the admin token read from its
# secret file, and a GET through the gateway.
API = """
import json, sys, urllib.request
token = open("/run/secrets/admin_token").read().strip()
request = urllib.request.Request("http://control:8000" + sys.argv[1], data=sys.argv[2].encode(),
                                 headers={"Authorization": "Bearer " + token, "Content-Type": "application/json"})
print(urllib.request.urlopen(request, timeout=10).read().decode())
"""
GET = """
import sys, urllib.request
request = urllib.request.Request("http://gateway:8080/", headers={"Host": sys.argv[1]})
with urllib.request.urlopen(request, timeout=10) as response:
    print(response.status, response.read().decode())
"""
ADMIN = "kma_" + "container-test-admin-token-0123456789abcdef"


@pytest.fixture(scope="module")
def podman(tmp_path_factory):
    return require_podman(tmp_path_factory.mktemp("podman"))


@pytest.fixture(scope="module")
def base(podman):
    base = base_image(podman)
    require_runnable(podman, base)
    return base


@pytest.fixture(scope="module")
def image(podman, base):
    return build_image(podman, base, wheelhouse())


@pytest.fixture
def pod(podman, image, tmp_path):
    pod = Pod(podman, image, tmp_path)
    yield pod
    pod.remove()


def api(pod: Pod, path: str, body: dict) -> dict:
    done = pod.exec_python("control", API, path, json.dumps(body))
    assert done.returncode == 0, done.stderr.decode()
    return json.loads(done.stdout)


def test_image_runs_as_its_own_user_with_a_healthcheck(podman, image):
    inspected = json.loads(podman.out("image", "inspect", image))[0]
    config = inspected["Config"]
    assert config["User"] == "kakuremichi" and config["Entrypoint"] == ["kakuremichi"]
    assert "/data" in config["Volumes"]
    assert inspected["Healthcheck"]["Test"] == ["CMD", "kakuremichi", "healthcheck"]
    uid = podman.out("run", "--rm", "--network", "none", "--entrypoint", "id", image, "-u")
    assert uid == str(IMAGE_UID)


def test_compose_services_serve_the_demo_app_through_the_gateway(pod):
    pod.write_secret("admin_token", ADMIN)
    pod.start("control")
    pod.wait_healthy("control")
    gateway = api(pod, "/api/gateways", {"name": "gw1"})
    agent = api(pod, "/api/agents", {"name": "demo"})
    api(pod, "/api/tunnels", {"domain": "demo.localhost", "agentId": agent["id"], "target": "demo:9000"})
    pod.write_secret("gateway_api_key", gateway["apiKey"])
    pod.write_secret("agent_api_key", agent["apiKey"])
    for service in ("demo", "gateway", "agent"):
        pod.start(service)
    for service in ("demo", "gateway", "agent"):
        pod.wait_healthy(service)

    deadline = time.monotonic() + 60
    while (done := pod.exec_python("demo", GET, "demo.localhost")).returncode != 0 or not done.stdout.startswith(b"200"):
        assert time.monotonic() < deadline, f"{done.stdout!r} {done.stderr[-500:]!r}\n{pod.diagnose()}"
        time.sleep(0.5)
    assert b"hello from the demo app, through kakuremichi" in done.stdout
    for service in ("control", "gateway", "agent", "demo"):  # none runs as root
        uid = pod.podman.out("exec", pod.containers[service], "id", "-u")
        assert uid == str(IMAGE_UID), service
    unknown = pod.exec_python("demo", GET, "nothing.localhost")  # the gateway answers it, not the demo app
    assert b"HTTP Error 404" in unknown.stderr, unknown


def test_the_image_builds_from_the_context_control_serves(podman, base, tmp_path):
    """The web UI's image command: `build <control>/dist/…-image.tar`, the Containerfile installing control's
    wheel instead of building a checkout; the image then holds exactly the code control runs."""
    deployment = Deployment(tmp_path, apps={}, gateways=(), agent=False)
    try:
        where = deployment.api.get("/api/install").json()
        served = httpx.get(where["wheelUrl"]).content
        built = build_image(podman, base, wheelhouse(), where["imageContextUrl"],
                            "localhost/kakuremichi:test-from-control")
    finally:
        deployment.close()
    inside = podman.out("run", "--rm", "--network", "none", "--entrypoint", "python3", built, "-c",
                        "import hashlib; from kakuremichi.control import dist; "
                        "print(hashlib.sha256(dist.wheel_bytes()).hexdigest())")
    assert inside == hashlib.sha256(served).hexdigest()
    assert podman.out("image", "inspect", "--format", "{{.User}}", built) == "kakuremichi"


def test_compose_file_passes_secrets_as_files_only():
    """No key or token in compose.yaml's environment or commands: each is a secret file that a *_FILE names."""
    services, secret_files = compose_services()
    for name, service in services.items():
        for variable, value in service.get("environment", {}).items():
            assert not variable.endswith(("_API_KEY", "_ADMIN_TOKEN", "_SECRETS_KEY", "_METRICS_TOKEN")), name
            if variable.endswith("_FILE") and variable != "KAKUREMICHI_HEALTHCHECK_FILE":
                assert value.removeprefix("/run/secrets/") in service["secrets"], (name, variable)
        assert not any("--api-key" in part or "--admin-token" in part for part in service.get("command", [])), name
    assert set(secret_files) == {secret for service in services.values() for secret in service.get("secrets", [])}
