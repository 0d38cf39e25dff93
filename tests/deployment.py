"""The product as users run it, every component a separate process started from its command line:
control, gateways, an agent, and local apps that only the agent reaches. Shared by the end-to-end tests
and the benchmarks."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from kakuremichi.gateway.workers import cpu_count

ROOT = Path(__file__).resolve().parents[1]
ADMIN = "kma_" + "e2e-admin-token-0123456789abcdef0123456789"


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_udp_ports(count: int) -> int:
    """The first of `count` consecutive free UDP ports (a gateway's workers take --wireguard-port + index)."""
    return free_ports(count, socket.SOCK_DGRAM)


def free_ports(count: int, kind: int = socket.SOCK_STREAM) -> int:
    """The first of `count` consecutive free ports of `kind` (TCP: a gateway's workers' --metrics-listen)."""
    while True:
        first = free_port(kind)
        probes = []
        try:
            for port in range(first, first + count):
                probe = socket.socket(socket.AF_INET, kind)
                probes.append(probe)
                probe.bind(("0.0.0.0", port))
            return first
        except OSError:
            continue
        finally:
            for probe in probes:
                probe.close()


def child_env(log_level: str = "info") -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(ROOT), KAKUREMICHI_LOG_LEVEL=log_level)


class Process:
    """A child process; its output goes to a log file (a pipe nobody reads would block it when full)."""

    def __init__(self, *args: str, ready: str | None = None, log: Path | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.args = args
        self.ready = ready
        self.log = log
        self.env = env or child_env()
        self.popen: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        offset = self.log.stat().st_size if self.log and self.log.exists() else 0  # earlier runs' lines
        output = open(self.log, "a") if self.log else subprocess.PIPE
        self.popen = subprocess.Popen([sys.executable, *self.args], env=self.env, stdout=output,
                                      stderr=subprocess.STDOUT, text=True)
        if self.ready and self.log:
            wait_for(lambda: self.ready.encode() in self.log.read_bytes()[offset:] or self.popen.poll() is not None,
                     60, f"{self.args[0]} to be ready")
            assert self.popen.poll() is None, f"{self.args} exited; see {self.log}"
        elif self.ready:
            line = self.popen.stdout.readline()
            assert self.ready in line, line

    def stop(self) -> None:
        if self.popen and self.popen.poll() is None:
            self.popen.send_signal(signal.SIGINT)
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


class Deployment:
    """control + gateways + (optionally) one agent (more with add_agent) + local apps, started from the command
    lines users run.

    `apps` maps a name to the Python arguments that run it (`("-c", script)` or `(path,)`); each gets a free
    port and its name as its two arguments, and must print "ready" once listening. With `https`, each gateway
    also listens for HTTPS (its port in `https_ports`). Gateways run `workers` worker processes (None: their
    default, one per CPU). With `launcher`, every component runs as `python -m LAUNCHER MODULE ...` (e.g.
    tests.windows_sockets).
    """

    def __init__(self, tmp: Path, apps: dict[str, tuple[str, ...]], gateways: tuple[str, ...] = ("gw1", "gw2"),
                 agent: bool = True, log_level: str = "info", heartbeat: float = 1.0, https: bool = False,
                 gateway_args: tuple[str, ...] = (), agent_args: tuple[str, ...] = (), workers: int | None = 1,
                 launcher: str | None = None, control_port: int | None = None,
                 control_args: tuple[str, ...] = ()) -> None:
        self.tmp = tmp
        self.launcher = launcher
        self.https = https
        self.https_ports: dict[str, int] = {}
        self.heartbeat = str(heartbeat)  # short by default, so tests see clients come and go quickly
        self.env = child_env(log_level)
        self.gateway_args = gateway_args  # extra command-line flags for every gateway
        self.workers = workers
        self.control_port = control_port or free_port()
        self.control_args = control_args  # extra command-line flags for control
        self.api = httpx.Client(base_url=f"http://127.0.0.1:{self.control_port}",
                                headers={"authorization": f"Bearer {ADMIN}"}, timeout=30)
        self.processes: list[Process] = []
        self.apps = {name: free_port() for name in apps}
        self.app_processes = {name: self.track(Process(*args, str(self.apps[name]), name, ready="ready", env=self.env))
                              for name, args in apps.items()}
        self.control = self.spawn_control()
        self.gateways: dict[str, tuple[Process, int]] = {}
        if agent:
            self.agent_key = self.create("agents", "home")["apiKey"]
            self.agent_id = self.api.get("/api/agents").json()["items"][0]["id"]
        for name in gateways:
            self.add_gateway(name)
        if agent:
            self.agent = self.spawn("kakuremichi.agent", "--control-url", f"http://127.0.0.1:{self.control_port}",
                                    "--api-key", self.agent_key, "--data-dir", str(tmp / "agent"),
                                    "--heartbeat-interval", self.heartbeat, *agent_args)

    def add_agent(self, name: str, *args: str) -> tuple[str, Process]:
        """Create another agent in control and start it (its data in `name`, its log agent<name>.log): its id and
        process."""
        created = self.create("agents", name)
        process = self.spawn("kakuremichi.agent", "--control-url", f"http://127.0.0.1:{self.control_port}",
                             "--api-key", created["apiKey"], "--data-dir", str(self.tmp / name),
                             "--heartbeat-interval", self.heartbeat, *args)
        return created["id"], process

    def add_gateway(self, name: str, http_port: int | None = None) -> Process:
        """Create a gateway in control and start it (on `http_port`, or a free port)."""
        key = self.create("gateways", name)["apiKey"]
        http_port = http_port or free_port()
        https_port = self.https_ports[name] = free_port() if self.https else 0
        workers = () if self.workers is None else ("--workers", str(self.workers))
        process = self.spawn("kakuremichi.gateway", "--control-url", self.ws_url, "--api-key", key, *workers,
                             "--public-host", "127.0.0.1", "--wireguard-port", str(free_udp_ports(self.workers or cpu_count())),
                             "--http-port", str(http_port), "--https-port", str(https_port), "--acme-directory", "off",
                             "--listen-host", "127.0.0.1", "--data-dir", str(self.tmp / name),
                             "--heartbeat-interval", self.heartbeat, *self.gateway_args)
        self.gateways[name] = (process, http_port)
        return process

    def worker_pids(self, gateway: str) -> dict[int, int]:
        """Worker index → pid of the worker processes `gateway` runs (Linux: read from /proc)."""
        supervisor, found = self.gateways[gateway][0].popen.pid, {}
        for entry in Path("/proc").iterdir():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                arguments = (entry / "cmdline").read_bytes().split(b"\0")
            except (OSError, ValueError, IndexError):
                continue
            if parent == supervisor and b"--worker-index" in arguments:
                found[int(arguments[arguments.index(b"--worker-index") + 1])] = int(entry.name)
        return found

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.control_port}/ws"

    def spawn(self, module: str, *args: str) -> Process:
        name = module.rsplit(".", 1)[1] + (args[args.index("--data-dir") + 1].rsplit("/", 1)[1]
                                             if "--data-dir" in args else "")
        launch = ("-m", self.launcher, module) if self.launcher else ("-m", module)
        return self.track(Process(*launch, *args, log=self.tmp / f"{name}.log", env=self.env))

    def track(self, process: Process) -> Process:
        """Stop `process` with the deployment."""
        self.processes.append(process)
        return process

    def spawn_control(self) -> Process:
        process = self.spawn("kakuremichi.control", "--listen", f"127.0.0.1:{self.control_port}", "--data-dir",
                             str(self.tmp / "control"), "--admin-token", ADMIN, "--heartbeat-interval", self.heartbeat,
                             *self.control_args)
        wait_for(lambda: self._healthy(), 15, "control to start")
        return process

    def _healthy(self) -> bool:
        try:
            return self.api.get("/healthz").status_code == 200
        except httpx.TransportError:
            return False

    def create(self, kind: str, name: str) -> dict:
        response = self.api.post(f"/api/{kind}", json={"name": name})
        assert response.status_code == 201, response.text
        return response.json()

    def tunnel(self, domain: str, app: str, agent_id: str | None = None, **extra) -> dict:
        response = self.api.post("/api/tunnels", json={"domain": domain, "agentId": agent_id or self.agent_id,
                                                       "target": f"127.0.0.1:{self.apps[app]}",
                                                       "tlsMode": "off", **extra})
        assert response.status_code == 201, response.text
        return response.json()

    def url(self, gateway: str, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.gateways[gateway][1]}{path}"

    def get(self, gateway: str, domain: str, path: str = "/", client: httpx.Client | None = None
            ) -> httpx.Response | None:
        """GET `path` of `domain` through `gateway`; None while the gateway cannot be reached."""
        try:
            return (client or httpx).get(self.url(gateway, path), headers={"host": domain}, timeout=5)
        except httpx.TransportError:
            return None

    def close(self) -> None:
        for process in reversed(self.processes):
            process.stop()
        self.api.close()


def wait_for(condition, timeout: float, what: str) -> float:
    """Poll until `condition()` is true; returns the seconds it took."""
    start = time.monotonic()
    while not condition():
        assert time.monotonic() - start < timeout, f"timed out waiting for {what}"
        time.sleep(0.05)
    return time.monotonic() - start
