"""Scenarios 3, 4a and 5: the full path client → gateway (process) → WireGuard → agent (process) → local
app, against the same app reached directly, and the same over HTTPS (TLS terminated at the gateway); then
1,000 tunnelled connections held open; with the gateway's and agent's memory after each load. The gateway
runs as users run it, with --workers' default (one per CPU; KAKUREMICHI_WORKERS=1 for one): its CPU and
memory figures are those of all its processes together. Last, issue 14's yardsticks (bench/yardsticks.py)
measured in the same rounds as this deployment.

The tests of this module run in order on one deployment, so each memory figure is taken after the load
before it; VmHWM is the process's peak so far. With BENCH_METRICS=1 the gateway's workers and the agent serve
--metrics-listen and are scraped every second meanwhile, to measure what the metrics cost.
"""

from __future__ import annotations

import os
import threading
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import yardsticks
from measure import (
    MB,
    HeldConnections,
    cpu_seconds,
    download_mbps,
    fresh_directory,
    memory_kb,
    serves_http_app,
    wrk,
)
from kakuremichi.gateway.workers import cpu_count
from tests.deployment import Deployment, free_port, free_ports, wait_for
from tests.netns import needs

HERE = Path(__file__).parent
DOMAIN = "full.bench.test"
DOWNLOAD = 100 * MB
DOWNLOADS = 3
WRK_SECONDS = 5
HELD = 1000
YARDSTICK_ROUNDS = 2
YARDSTICK_WRK_SECONDS = 3
METRICS = os.environ.get("BENCH_METRICS") == "1"
SCRAPE_INTERVAL = 1.0  # seconds; Prometheus' default is 15


@pytest.fixture(scope="module")
def deployment():
    scraped = [free_ports(cpu_count()), free_port()] if METRICS else []  # the gateway's workers' first, the agent's
    d = Deployment(fresh_directory("full_path"), apps={"app": (str(HERE / "http_app.py"),)},
                   gateways=("gw",), https=True, workers=None,  # as users run it: --workers' default
                   gateway_args=("--metrics-listen", f"127.0.0.1:{scraped[0]}") if METRICS else (),
                   agent_args=("--metrics-listen", f"127.0.0.1:{scraped[1]}") if METRICS else ())
    d.metrics_urls = ([f"http://127.0.0.1:{scraped[0] + i}/metrics" for i in range(cpu_count())]
                      + [f"http://127.0.0.1:{scraped[1]}/metrics"]) if METRICS else []
    try:
        d.tunnel(DOMAIN, "app", tlsMode="self-signed")  # HTTPS with a certificate the gateway makes itself
        wait_for(lambda: serves_http_app(d, "gw", DOMAIN), 30, "the tunnel to serve")
        yield d
    finally:
        d.close()


def _pids(d: Deployment) -> dict[str, list[int]]:
    """The gateway's processes (with --workers > 1, the supervisor and its workers) and the agent's."""
    return {"gateway": [d.gateways["gw"][0].popen.pid, *d.worker_pids("gw").values()], "agent": [d.agent.popen.pid]}


def _cpu(pids: list[int]) -> float:
    return sum(map(cpu_seconds, pids))


def _memory(pids: list[int]) -> dict[str, int]:
    """RSS now and peaks, in KiB, summed over `pids` (the peaks of workers need not have been at once)."""
    each = [memory_kb(pid) for pid in pids]
    return {name: sum(memory[name] for memory in each) for name in ("rss", "hwm")}


def _record_memory(record, d: Deployment, load: str) -> None:
    """RSS now and peak so far of gateway and agent, in MB, tagged with the load just applied."""
    for role, pids in _pids(d).items():
        memory = _memory(pids)
        record("memory", **{f"{role}_rss_mb_after_{load}": memory["rss"] / 1024,
                            f"{role}_peak_rss_mb_{load}": memory["hwm"] / 1024})


def test_idle_memory(deployment, record):
    time.sleep(2)  # past start-up work, one request served: what an agent costs while it waits
    for role, pids in _pids(deployment).items():
        record("memory", **{f"{role}_idle_rss_mb": _memory(pids)["rss"] / 1024})


def _busy(d: Deployment, work):
    """work()'s result, and the CPU percent gateway and agent used meanwhile (100 = one core)."""
    pids = _pids(d)
    before, start = {role: _cpu(group) for role, group in pids.items()}, time.perf_counter()
    result = work()
    elapsed = time.perf_counter() - start
    return result, {role: (_cpu(group) - before[role]) / elapsed * 100 for role, group in pids.items()}


def test_download(deployment, record):
    """Best of DOWNLOADS runs each way: the machine is shared, and the best shows what the path can do."""
    direct = max(download_mbps(deployment.apps["app"], DOMAIN, DOWNLOAD) for _ in range(DOWNLOADS))
    runs = [_busy(deployment, lambda: download_mbps(deployment.gateways["gw"][1], DOMAIN, DOWNLOAD))
            for _ in range(DOWNLOADS)]
    through, cpu = max(runs, key=lambda run: run[0])
    record("http_full_path", download_mbps=through, direct_download_mbps=direct,
           download_mbps_runs=[round(mbps, 1) for mbps, _ in runs],
           **{f"{role}_cpu_percent_download": percent for role, percent in cpu.items()})
    _record_memory(record, deployment, "download")


@needs("wrk", "wrk")
@pytest.mark.parametrize("connections", [1, 16, 64])
def test_requests(deployment, record, connections):
    direct = wrk(f"http://127.0.0.1:{deployment.apps['app']}/", DOMAIN, connections, WRK_SECONDS)
    access_log = deployment.gateways["gw"][0].log
    logged = access_log.stat().st_size
    with _scraped(deployment) as scrapes:
        through, cpu = _busy(deployment, lambda: wrk(deployment.url("gw"), DOMAIN, connections, WRK_SECONDS))
    figures = {f"{role}_cpu_percent_c{connections}": percent for role, percent in cpu.items()}
    figures["metrics_scrapes"] = len(scrapes)
    figures["gateway_workers"] = len(deployment.worker_pids("gw")) or 1
    # each request the gateway could not serve on a pooled connection paid a new tunnel connection
    requests = [line for line in access_log.read_bytes()[logged:].splitlines() if b"gateway.access" in line]
    figures[f"upstream_reused_fraction_c{connections}"] = (
        sum(b" reused=True" in line for line in requests) / max(len(requests), 1))
    for prefix, result in (("", through), ("direct_", direct)):
        figures.update({f"{prefix}{name}_c{connections}": value for name, value in result.items()})
    record("http_full_path", **figures)
    _record_memory(record, deployment, "requests")
    assert through["rps"] > 0


@contextmanager
def _scraped(d: Deployment):
    """With BENCH_METRICS, every metrics endpoint scraped each SCRAPE_INTERVAL in the block; yields the sizes."""
    scrapes: list[int] = []
    done = threading.Event()

    def scrape() -> None:
        while not done.wait(SCRAPE_INTERVAL):
            scrapes.extend(len(httpx.get(url, timeout=5).content) for url in d.metrics_urls)

    thread = threading.Thread(target=scrape, daemon=True)
    if d.metrics_urls:
        thread.start()
    try:
        yield scrapes
    finally:
        done.set()
        if d.metrics_urls:
            thread.join()


@needs("wrk", "wrk")
def test_https(deployment, record):
    """The same path with TLS terminated at the gateway: 1 KB requests at 64 connections (one handshake per
    connection, as browsers keep theirs alive), and the download."""
    port = deployment.https_ports["gw"]
    wait_for(lambda: download_mbps(port, DOMAIN, MB, tls=True) > 0, 30, "HTTPS to serve")
    through, cpu = _busy(deployment, lambda: wrk(f"https://127.0.0.1:{port}/", DOMAIN, 64, WRK_SECONDS))
    download = max(download_mbps(port, DOMAIN, DOWNLOAD, tls=True) for _ in range(DOWNLOADS))
    record("http_full_path", https_download_mbps=download,
           **{f"https_{name}_c64": value for name, value in through.items()},
           **{f"{role}_cpu_percent_https_c64": percent for role, percent in cpu.items()})
    assert through["rps"] > 0 and not through["errors"]


def _active_connections(d: Deployment) -> int | None:
    stats = d.api.get("/api/agents").json()["items"][0]["metadata"].get("stats", {})
    return stats.get("activeConnections")


def test_held_connections(deployment, record):
    pids = _pids(deployment)
    before = {role: _memory(group)["rss"] for role, group in pids.items()}
    pooled = _active_connections(deployment) or 0  # the gateway's idle keep-alive connections from wrk
    held = HeldConnections()
    try:
        start = time.perf_counter()
        refused = held.open(deployment.gateways["gw"][1], DOMAIN, HELD)
        opened = time.perf_counter() - start
        held.echo()
        time.sleep(1)
        after = {role: _memory(group)["rss"] for role, group in pids.items()}
        cpu = {role: _cpu(group) for role, group in pids.items()}
        time.sleep(5)  # idle: per-connection timers would show here as CPU time
        idle_cpu = {role: (_cpu(group) - cpu[role]) / 5 * 100 for role, group in pids.items()}
        wait_for(lambda: _active_connections(deployment) >= len(held.socks), 10, "the agent to report them")
        held.echo()
    finally:
        held.close()
    held_open = HELD - len(refused)
    record("scale_connections", connections=held_open, refused=len(refused), open_seconds=opened,
           connections_per_s=HELD / opened,
           **{f"{role}_kb_per_connection": (after[role] - before[role]) / held_open for role in pids},
           **{f"{role}_idle_cpu_percent": idle_cpu[role] for role in pids})
    _record_memory(record, deployment, f"{HELD}_connections")
    closed = wait_for(lambda: _active_connections(deployment) <= pooled, 30, "the agent to drop closed connections")
    record("scale_connections", seconds_until_agent_released_all=closed,
           **{f"{role}_rss_mb_after_close": _memory(group)["rss"] / 1024 for role, group in pids.items()})
    assert not refused, f"{len(refused)} of {HELD} upgrades refused: {sorted(set(refused))}; logs in {deployment.tmp}"


@needs("wrk", "wrk")
def test_yardsticks(deployment, record):
    """kakuremichi, the app directly, nginx + wireguard-go and nginx + `ssh -R`, under the same wrk loads and
    download in interleaved rounds; a yardstick whose tools are missing is skipped, and says which packages
    it needs, in the table and summary.json."""
    tmp = fresh_directory("yardsticks")
    with yardsticks.built(deployment, "app", "gw", tmp, DOMAIN) as (systems, skipped):
        figures = yardsticks.measure(systems, DOMAIN, YARDSTICK_ROUNDS, YARDSTICK_WRK_SECONDS, DOWNLOAD)
    for name, reason in skipped.items():
        warnings.warn(f"yardstick {name} skipped: {reason}")
        record("yardsticks", **{name: {"skipped": reason}})
    record("yardsticks", **figures)
    if ratios := yardsticks.ratios(figures):
        record("http_full_path", **ratios)
    failing = {name: f["wrk_errors"] for name, f in figures.items() if f["wrk_errors"]}
    assert not failing, f"wrk counted errors (figures meaningless): {failing}; logs in {tmp}"
