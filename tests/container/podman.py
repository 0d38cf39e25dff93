"""Podman for the image tests: a base image made from Debian's packages (no image registry is reachable), a
wheelhouse so the build needs no index, the image built from the Containerfile, and compose.yaml's services
run as containers of one pod.

The base (debootstrap minbase + python3 + python3-venv, about a minute) is cached under ~/.cache/kakuremichi
like the wheelhouse (tests/wheelhouse.py), keyed by what goes into it, so that a later run only builds the
image (seconds).
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from tests.deployment import ROOT
from tests.wheelhouse import CACHE

BASE_PACKAGES = ("python3", "python3-venv")
IMAGE = "localhost/kakuremichi:test"
IMAGE_UID = 10001  # the Containerfile's user


def os_codename() -> str:
    for line in Path("/etc/os-release").read_text().splitlines():
        if line.startswith("VERSION_CODENAME="):
            return line.partition("=")[2].strip('"')
    pytest.skip("the base image is a debootstrap of this machine's Debian release: no VERSION_CODENAME in /etc/os-release")


class Podman:
    """Runs podman as root with runc and cgroupfs (no systemd here), and ulimits at or below this machine's hard
    limits: podman's defaults are above them, and runc may not raise them in this sandbox."""

    def __init__(self, workdir: Path) -> None:
        conf = workdir / "containers.conf"
        nofile = min(_hard_limit(resource.RLIMIT_NOFILE), 1 << 16)
        nproc = min(_hard_limit(resource.RLIMIT_NPROC), 8192)
        conf.write_text(f'[containers]\ndefault_ulimits = ["nofile={nofile}:{nofile}", "nproc={nproc}:{nproc}"]\n'
                        '[engine]\nruntime = "runc"\ncgroup_manager = "cgroupfs"\n')
        self.env = dict(os.environ, CONTAINERS_CONF=str(conf))

    def __call__(self, *args: str, check: bool = True, timeout: float = 600, input: bytes | None = None
                 ) -> subprocess.CompletedProcess:
        done = subprocess.run(["podman", *args], env=self.env, capture_output=True, timeout=timeout, input=input)
        if check and done.returncode != 0:
            raise AssertionError(f"podman {' '.join(args[:3])} … failed ({done.returncode}): "
                                 f"{done.stderr.decode(errors='replace')[-3000:]}")
        return done

    def out(self, *args: str) -> str:
        return self(*args).stdout.decode().strip()


def _hard_limit(which: int) -> int:
    hard = resource.getrlimit(which)[1]
    return 1 << 20 if hard == resource.RLIM_INFINITY else hard


def require_podman(workdir: Path) -> Podman:
    """A Podman that runs containers here, or a skip naming the Debian package that is missing."""
    for program, package in (("podman", "podman"), ("debootstrap", "debootstrap"), ("catatonit", "catatonit")):
        if shutil.which(program) is None and not Path("/usr/libexec/podman", program).exists():
            pytest.skip(f"needs {program} (apt-get install {package})")
    if os.geteuid() != 0:
        pytest.skip("the image tests run podman as root (debootstrap makes the base image as root)")
    return Podman(workdir)


def base_image(podman: Podman) -> str:
    """A local image of Debian's python3 + python3-venv: debootstrapped once, cached as a tarball."""
    suite = os_codename()
    key = hashlib.sha256(f"{suite} minbase {','.join(BASE_PACKAGES)}".encode()).hexdigest()[:12]
    name = f"localhost/kakuremichi-test-base:{key}"
    if podman("image", "exists", name, check=False).returncode == 0:
        return name
    tarball = CACHE / "container-base" / f"{suite}-{key}.tar"
    if not tarball.exists():
        tarball.parent.mkdir(parents=True, exist_ok=True)
        root = tarball.parent / f"root-{key}"
        shutil.rmtree(root, ignore_errors=True)
        made = subprocess.run(["debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}", suite,
                               str(root)], capture_output=True, text=True, timeout=900)
        if made.returncode != 0:
            shutil.rmtree(root, ignore_errors=True)
            pytest.skip(f"debootstrap could not make the base image (Debian's archive unreachable?): "
                        f"{made.stdout[-500:]}{made.stderr[-500:]}")
        partial = tarball.with_suffix(".partial")
        subprocess.run(["tar", "-C", str(root), "--numeric-owner", "-cf", str(partial), "."], check=True)
        partial.rename(tarball)
        shutil.rmtree(root)
    podman("import", str(tarball), name)
    return name


def build_image(podman: Podman, base: str, house: Path, context: str = str(ROOT), tag: str = IMAGE) -> str:
    """The image of `context` (a checkout, or the URL of control's image context) on `base`, its
    dependencies from `house`."""
    previous = podman("image", "inspect", "--format", "{{.Id}}", tag, check=False).stdout.decode().strip()
    podman("build", "--format", "docker", "--network", "none", "--layers=false", "-v", f"{house}:/wheelhouse:ro",
           "--build-arg", f"BASE={base}", "--build-arg", "PIP_NO_INDEX=1", "--build-arg", "PIP_FIND_LINKS=/wheelhouse",
           "-t", tag, context)
    if previous:  # the last run's image, untagged now: not left to pile up
        podman("rmi", previous, check=False)
    return tag


def require_runnable(podman: Podman, image: str) -> None:
    """Skip, naming the packages, where podman is installed but cannot start a container here."""
    tried = podman("run", "--rm", "--network", "none", "--entrypoint", "true", image, check=False)
    if tried.returncode != 0:
        pytest.skip(f"podman cannot run a container here (needs podman, runc and catatonit: apt-get install "
                    f"podman runc catatonit): {tried.stderr.decode(errors='replace')[-500:]}")


def compose_services() -> tuple[dict, dict]:
    """compose.yaml's services and its secrets' files."""
    spec = yaml.safe_load((ROOT / "compose.yaml").read_text())
    return spec["services"], {name: secret["file"] for name, secret in spec["secrets"].items()}


class Pod:
    """compose.yaml's services as containers of one pod with only a loopback network: the service names
    resolve to 127.0.0.1 (a hosts file of ours), published ports are left out (nothing outside is reached),
    each data volume is a directory of the test's, the secrets are its files."""

    def __init__(self, podman: Podman, image: str, workdir: Path) -> None:
        self.podman, self.image, self.workdir = podman, image, workdir
        self.services, self.secret_files = compose_services()
        self.name = f"kakuremichi-test-{os.getpid()}"
        self.hosts = workdir / "hosts"
        self.hosts.write_text(f"127.0.0.1 localhost {' '.join(self.services)}\n")
        (workdir / "secrets").mkdir(mode=0o700)
        podman("pod", "create", "--name", self.name, "--network", "none")
        self.containers: dict[str, str] = {}

    def write_secret(self, name: str, value: str) -> None:
        """The file compose.yaml names for secret `name`, readable by the image's user only."""
        path = self.workdir / self.secret_files[name]
        path.write_text(value + "\n")
        os.chown(path, IMAGE_UID, -1)
        path.chmod(0o600)

    def start(self, service: str) -> str:
        spec = self.services[service]
        args = ["run", "-d", "--pod", self.name, "--name", f"{self.name}-{service}", "-v", f"{self.hosts}:/etc/hosts:ro"]
        for key, value in spec.get("environment", {}).items():
            args += ["-e", f"{key}={value}"]
        for secret in spec.get("secrets", []):
            args += ["-v", f"{self.workdir / self.secret_files[secret]}:/run/secrets/{secret}:ro"]
        for volume in spec.get("volumes", []):
            data = self.workdir / volume.partition(":")[0]
            data.mkdir(mode=0o700)
            os.chown(data, IMAGE_UID, -1)
            args += ["-v", f"{data}:{volume.partition(':')[2]}"]
        if "entrypoint" in spec:
            args += ["--entrypoint", json.dumps(spec["entrypoint"])]
        self.containers[service] = self.podman.out(*args, self.image, *spec.get("command", []))
        return self.containers[service]

    def exec_python(self, service: str, script: str, *args: str) -> subprocess.CompletedProcess:
        return self.podman("exec", self.containers[service], "python3", "-c", script, *args, check=False, timeout=60)

    def healthy(self, service: str) -> subprocess.CompletedProcess:
        return self.podman("healthcheck", "run", self.containers[service], check=False, timeout=60)

    def wait_healthy(self, service: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while (done := self.healthy(service)).returncode != 0:
            assert time.monotonic() < deadline, f"{service} not healthy: {self.diagnose()}"
            time.sleep(0.5)

    def diagnose(self) -> str:
        """Each container's state and last log lines, for a failing assertion."""
        lines = []
        for service, container in self.containers.items():
            state = self.podman("inspect", "--format", "{{.State.Status}}", container, check=False).stdout.decode()
            logs = self.podman("logs", "--tail", "15", container, check=False)
            lines.append(f"--- {service} ({state.strip()}):\n{(logs.stdout + logs.stderr).decode(errors='replace')}")
        return "\n".join(lines)

    def remove(self) -> None:
        self.podman("pod", "rm", "-f", "-t", "2", self.name, check=False)
