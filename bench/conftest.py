"""Benchmark harness: each scenario records figures; the session prints one table and writes
bench/out/summary.json (one object per scenario), so a single `pytest bench/` run compares everything
side by side on the same machine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

OUT = Path(__file__).parent / "out"
_results: dict[str, dict] = {}

# Issue 7's targets: shown pass/fail beside the figures; a miss never fails the run (figures are the point).
TARGETS = [
    ("tcp_bulk", "ratio_vs_wireguard_go", ">=", 0.5, "tunnel TCP bulk >= 0.5 x wireguard-go + kernel TCP"),
    ("http_full_path", "download_mbps", ">=", 300, "full-path 100 MB download >= 300 Mbit/s"),
    ("http_full_path", "rps_c64", ">=", 3000, "full path >= 3,000 req/s at 64 connections"),
    ("http_full_path", "p99_ms_c64", "<", 50, "full path p99 < 50 ms at 64 connections"),
    ("scale_connections", "gateway_kb_per_connection", "<=", 30, "gateway <= 30 KB per idle tunnelled connection"),
    ("scale_connections", "agent_kb_per_connection", "<=", 30, "agent <= 30 KB per idle tunnelled connection"),
    ("memory", "agent_idle_rss_mb", "<=", 60, "agent idle RSS <= 60 MB"),
] + [  # issue 14: against the yardsticks measured in the same rounds
    ("http_full_path", "ratio_rps_c64_vs_nginx_wireguard_go", ">=", 0.5,
     "full path req/s at c64 >= 0.5 x nginx + wireguard-go"),
    ("http_full_path", "ratio_p99_ms_c64_vs_nginx_wireguard_go", "<=", 3,
     "full path p99 at c64 <= 3 x nginx + wireguard-go"),
    ("http_full_path", "ratio_download_vs_ssh_r", ">=", 1.0, "full path 100 MB download >= 1.0 x nginx + ssh -R"),
    ("http_full_path", "ratio_cpu_s_per_1000_req_vs_nginx_wireguard_go", "<=", 3,
     "CPU s per 1,000 requests <= 3 x nginx + wireguard-go"),
] + [  # issue 16: a password-protected tunnel's requests (session checked on each) against a public one's
    ("access", "ratio_rps_protected_vs_public", ">=", 0.85, "protected tunnel req/s >= 0.85 x public, same run"),
] + [  # issue 13: another tenant's flood at most doubles a tenant's request latency
    ("fairness", f"{kind}_flood_{stat}_ratio", "<=", 2, f"{kind} flood: legit {stat} <= 2 x no flood")
    for kind in ("transport", "handshake", "syn", "connect", "exit") for stat in ("p50", "p99")
] + [  # issue 15: a tcp tunnel against ssh -R, a udp tunnel's loss at the offered rate
    ("port_tunnels", "tcp_ratio_vs_ssh_r", ">=", 1.0, "tcp tunnel iperf3 >= 1.0 x ssh -R"),
    ("port_tunnels", "udp_tunnel_loss_percent", "<=", 5, "udp tunnel loss <= 5 % at 50 Mbit/s"),
]


@pytest.fixture
def record():
    """record(scenario, **figures): merge figures into the scenario's entry of summary.json."""

    def _record(scenario: str, **figures) -> None:
        _results.setdefault(scenario, {}).update(_rounded(figures))

    return _record


def _rounded(figures: dict) -> dict:
    return {k: round(v, 3) if isinstance(v, float) else _rounded(v) if isinstance(v, dict) else v
            for k, v in figures.items()}


def _derive_ratios() -> None:
    """Ratios are the point of running side by side: ours against each yardstick measured in this run."""
    for figures in _results.values():
        ours = figures.get("ours_mbps")
        for yardstick in ("wireguard_go_mbps", "direct_mbps"):
            if ours and figures.get(yardstick):
                figures["ratio_vs_" + yardstick.removesuffix("_mbps")] = round(ours / figures[yardstick], 3)


def _targets() -> dict[str, dict]:
    """Each target whose figure this run measured: the figure, the bound, and whether it is met."""
    checks = {">=": float.__ge__, "<=": float.__le__, "<": float.__lt__}
    verdicts = {}
    for scenario, key, op, bound, label in TARGETS:
        value = _results.get(scenario, {}).get(key)
        if value is not None:
            verdicts[label] = {"value": value, "target": f"{op} {bound}", "pass": checks[op](float(value), bound)}
    return verdicts


def pytest_sessionfinish(session, exitstatus):
    if not _results:
        return
    _derive_ratios()
    _results["targets"] = _targets()
    OUT.mkdir(exist_ok=True)
    summary = OUT / "summary.json"
    existing = json.loads(summary.read_text()) if summary.exists() else {}
    existing.update(_results)
    summary.write_text(json.dumps(existing, indent=2, sort_keys=True) + "\n")


def pytest_terminal_summary(terminalreporter):
    if not _results:
        return
    _derive_ratios()
    terminalreporter.section("kakuremichi benchmarks")
    for scenario, figures in _results.items():
        if scenario == "targets":
            continue
        terminalreporter.write_line(scenario)
        for key, value in figures.items():
            if isinstance(value, dict):  # a yardstick's figures
                terminalreporter.write_line(f"    {key}")
                for name, figure in value.items():
                    terminalreporter.write_line(f"        {name:<44} {figure}")
            else:
                terminalreporter.write_line(f"    {key:<48} {value}")
    terminalreporter.write_line("targets (issues 7, 13, 14)")
    for label, verdict in _targets().items():
        terminalreporter.write_line(f"    {'PASS' if verdict['pass'] else 'FAIL'}  {label:<52} "
                                    f"{verdict['value']} (target {verdict['target']})")
    terminalreporter.write_line(f"written to {OUT / 'summary.json'}")
