"""The full path's yardsticks, each a `System` built once per run: the same app (bench/http_app.py) reached
directly, through kakuremichi, through nginx → wireguard-go ⇄ wireguard-go (two network namespaces, a veth
between them), and through nginx → an `ssh -R` forwarded port (a throwaway sshd on loopback). `measure()`
runs the same wrk loads and download against all of them in interleaved rounds, so the machine's drift hits
all alike, and charges each the CPU time of its own processes."""

from __future__ import annotations

import contextlib
import os
import shutil
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from measure import cpu_seconds, download_mbps, process_tree, wrk
from tests.deployment import Deployment, free_port, wait_for
from tests.netns import KernelWireGuardPeer, netns_available, wireguard_go_pair
from tests.sshd import throwaway_sshd

HERE = Path(__file__).parent
CONNECTIONS = (1, 16, 64)
UPSTREAM_KEEPALIVE = 128  # idle upstream connections nginx keeps, as the gateway keeps per agent

# program → Debian package, for each yardstick that needs more than Python
NEEDS = {
    "nginx_wireguard_go": {"nginx": "nginx", "wireguard-go": "wireguard-go", "wg": "wireguard-tools",
                           "ip": "iproute2"},
    "ssh_r": {"nginx": "nginx", "sshd": "openssh-server", "ssh": "openssh-client", "ssh-keygen": "openssh-client",
              "unshare": "util-linux", "mount": "mount"},
}


@dataclass
class System:
    """One way to reach the app: where wrk points, and the processes whose CPU time it costs."""

    name: str
    address: str
    port: int
    pids: Callable[[], list[int]]
    close: Callable[[], None] = lambda: None

    @property
    def url(self) -> str:
        return f"http://{self.address}:{self.port}/"

    def serves(self, host: str) -> bool:
        try:
            return download_mbps(self.port, host, 1024, address=self.address) > 0
        except (OSError, AssertionError):
            return False


def missing(name: str) -> str | None:
    """Why yardstick `name` cannot be built here (naming the Debian packages to install), or None."""
    absent = {program: package for program, package in NEEDS[name].items() if shutil.which(program) is None}
    if absent:
        return f"needs {', '.join(absent)} (apt-get install {' '.join(dict.fromkeys(absent.values()))})"
    if name == "nginx_wireguard_go":
        return netns_available()
    if os.geteuid() != 0:
        return "needs root (sshd's privilege separation)"
    return None


@contextlib.contextmanager
def built(d: Deployment, app: str, gateway: str, tmp: Path, host: str):
    """(systems, skipped): kakuremichi (`gateway` of `d`), `app` directly, and each yardstick whose tools are
    here, torn down on leaving; `skipped` maps each other yardstick to why."""
    systems = [kakuremichi(d, gateway), direct(d, app)]
    builders = {"nginx_wireguard_go": lambda: nginx_wireguard_go(tmp / "nginx_wireguard_go", host),
                "ssh_r": lambda: ssh_r(tmp / "ssh_r", d.apps[app], host)}
    skipped = {name: missing(name) for name in builders}
    try:
        for name, build in builders.items():
            if not skipped[name]:
                systems.append(build())  # one at a time: those built are torn down if the next fails
        yield systems, {name: reason for name, reason in skipped.items() if reason}
    finally:
        for system in systems:
            system.close()


def ratios(figures: dict[str, dict]) -> dict[str, float]:
    """kakuremichi's figures over the yardsticks' that the targets name, for those measured."""
    ours, wireguard_go, ssh = (figures.get(name) for name in ("kakuremichi", "nginx_wireguard_go", "ssh_r"))
    found = {}
    if wireguard_go:
        found.update({f"ratio_{key}_vs_nginx_wireguard_go": ours[key] / wireguard_go[key]
                      for key in ("rps_c64", "p99_ms_c64", "cpu_s_per_1000_req")})
    if ssh:
        found["ratio_download_vs_ssh_r"] = ours["download_mbps"] / ssh["download_mbps"]
    return found


def direct(d: Deployment, app: str) -> System:
    return System("direct", "127.0.0.1", d.apps[app], pids=lambda: [d.app_processes[app].popen.pid])


def kakuremichi(d: Deployment, gateway: str) -> System:
    """Its CPU is that of control, the gateway's supervisor and every worker it runs, and the agent."""
    processes = (d.control, d.gateways[gateway][0], d.agent)
    return System("kakuremichi", "127.0.0.1", d.gateways[gateway][1],
                  pids=lambda: [pid for p in processes for pid in process_tree(p.popen.pid)])


def nginx_wireguard_go(tmp: Path, host: str) -> System:
    """nginx in namespace a proxies to a second http_app.py in namespace b, across both wireguard-go."""
    with contextlib.ExitStack() as stack:
        a, b = stack.enter_context(wireguard_go_pair("10.88.0.1/24", "10.88.0.2/24"))
        app_port = free_port()
        app = b.popen(sys.executable, str(HERE / "http_app.py"), str(app_port), "app", b.tunnel_ip,
                      stdout=subprocess.PIPE, text=True)
        stack.callback(_stop, app)
        assert "ready" in app.stdout.readline()
        port = free_port()
        nginx = _nginx(tmp / "nginx_wireguard_go", f"{a.ns_ip}:{port}", f"{b.tunnel_ip}:{app_port}", a)
        stack.callback(_stop, nginx)
        system = System("nginx_wireguard_go", a.ns_ip, port, close=stack.pop_all().close,
                        pids=lambda: [*process_tree(nginx.pid), a.process.pid, b.process.pid])
    _wait_serving(system, host)
    return system


def ssh_r(tmp: Path, app_port: int, host: str) -> System:
    """nginx proxies to a port that `ssh -R` forwards from a throwaway sshd to the app."""
    tmp.mkdir(parents=True)
    with contextlib.ExitStack() as stack:
        sshd = stack.enter_context(throwaway_sshd(tmp / "sshd"))
        forwarded_port = free_port()
        ssh = subprocess.Popen(
            ["ssh", "-N", *sshd.options(), "-p", str(sshd.port), "-o", "ExitOnForwardFailure=yes",
             "-R", f"127.0.0.1:{forwarded_port}:127.0.0.1:{app_port}", f"{sshd.user}@127.0.0.1"],
            stdout=subprocess.DEVNULL, stderr=stack.enter_context(open(tmp / "ssh.log", "w")))
        stack.callback(_stop, ssh)
        port = free_port()
        nginx = _nginx(tmp / "nginx", f"127.0.0.1:{port}", f"127.0.0.1:{forwarded_port}")
        stack.callback(_stop, nginx)
        system = System("ssh_r", "127.0.0.1", port, close=stack.pop_all().close,
                        pids=lambda: [*process_tree(nginx.pid), *process_tree(sshd.process.pid), ssh.pid])
    _wait_serving(system, host)
    return system


def _wait_serving(system: System, host: str) -> None:
    try:
        wait_for(lambda: system.serves(host), 20, f"{system.name} to serve the app")
    except BaseException:
        system.close()
        raise


def _nginx(prefix: Path, listen: str, upstream: str, namespace: KernelWireGuardPeer | None = None
           ) -> subprocess.Popen:
    """nginx as Debian configures it (a worker per core), proxying `listen` to `upstream` over HTTP/1.1 with
    idle upstream connections kept, buffered access log, in `namespace` if given; everything it writes
    stays under `prefix`."""
    prefix.mkdir(parents=True)
    (prefix / "nginx.conf").write_text(f"""
user root;  # not nobody: the temp paths under the prefix are root's
worker_processes auto;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log {prefix}/access.log combined buffer=64k flush=1s;
    client_body_temp_path {prefix}/client_body; proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi; uwsgi_temp_path {prefix}/uwsgi; scgi_temp_path {prefix}/scgi;
    upstream app {{ server {upstream}; keepalive {UPSTREAM_KEEPALIVE}; }}
    server {{
        listen {listen} backlog=4096;
        location / {{
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_max_temp_file_size 0;
        }}
    }}
}}
""")
    command = ["nginx", "-p", str(prefix), "-e", str(prefix / "error.log"), "-c", str(prefix / "nginx.conf"),
               "-g", "daemon off;"]
    popen = namespace.popen if namespace else lambda *args, **kwargs: subprocess.Popen(args, **kwargs)
    return popen(*command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def measure(systems: list[System], host: str, rounds: int, seconds: float, download_size: int) -> dict[str, dict]:
    """Per system: req/s at each of CONNECTIONS and p99 at the last (medians over rounds), the best download
    in Mbit/s, and CPU seconds of its processes per 1,000 requests over all its wrk runs. Each round loads
    every system in turn with wrk at each connection count, then downloads once from each."""
    runs = {system.name: [] for system in systems}
    cpu = dict.fromkeys(runs, 0.0)
    requests = dict.fromkeys(runs, 0)
    downloads = {name: [] for name in runs}
    for _ in range(rounds):
        for system in systems:
            pids = system.pids()
            before = sum(map(cpu_seconds, pids))
            results = {c: wrk(system.url, host, c, seconds) for c in CONNECTIONS}
            cpu[system.name] += sum(map(cpu_seconds, pids)) - before
            requests[system.name] += sum(r["requests"] for r in results.values())
            runs[system.name].append(results)
        for system in systems:
            downloads[system.name].append(download_mbps(system.port, host, download_size, address=system.address))
    figures, last = {}, CONNECTIONS[-1]
    for name, results in runs.items():
        figures[name] = {
            **{f"rps_c{c}": statistics.median(r[c]["rps"] for r in results) for c in CONNECTIONS},
            f"p99_ms_c{last}": statistics.median(r[last]["p99_ms"] for r in results),
            "download_mbps": max(downloads[name]),
            "cpu_s_per_1000_req": cpu[name] / max(requests[name], 1) * 1000,
            "wrk_errors": sum(r[c]["errors"] for r in results for c in CONNECTIONS),
        }
    return figures
