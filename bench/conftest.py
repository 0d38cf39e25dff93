"""Benchmark harness: each scenario records figures; the session prints one table and writes
bench/out/summary.json (one object per scenario), so a single `pytest bench/` run compares everything
side by side on the same machine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

OUT = Path(__file__).parent / "out"
_results: dict[str, dict] = {}


@pytest.fixture
def record():
    """record(scenario, **figures): merge figures into the scenario's entry of summary.json."""

    def _record(scenario: str, **figures) -> None:
        _results.setdefault(scenario, {}).update(
            {k: round(v, 3) if isinstance(v, float) else v for k, v in figures.items()})

    return _record


def _derive_ratios() -> None:
    """Ratios are the point of running side by side: ours against each yardstick measured in this run."""
    for figures in _results.values():
        ours = figures.get("ours_mbps")
        for yardstick in ("wireguard_go_mbps", "direct_mbps"):
            if ours and figures.get(yardstick):
                figures["ratio_vs_" + yardstick.removesuffix("_mbps")] = round(ours / figures[yardstick], 3)


def pytest_sessionfinish(session, exitstatus):
    if not _results:
        return
    _derive_ratios()
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
        terminalreporter.write_line(scenario)
        for key, value in figures.items():
            terminalreporter.write_line(f"    {key:<34} {value}")
    terminalreporter.write_line(f"written to {OUT / 'summary.json'}")
