"""Prometheus text exposition for /metrics: connected clients, agents and gateways by status, config pushes,
auth failures."""

from __future__ import annotations

from collections import Counter

from pony.orm import count, db_session, select

_HELP = {
    "kakuremichi_control_clients_connected": ("gauge", "Authenticated WebSocket clients, by role."),
    "kakuremichi_control_config_pushes_total": ("counter", "Configs sent to clients, by role."),
    "kakuremichi_control_config_acks_total": ("counter", "Configs acknowledged by clients, by role."),
    "kakuremichi_control_auth_failures_total": ("counter", "Rejected WebSocket authentications, by reason."),
    "kakuremichi_control_config_version": ("gauge", "Current global config version."),
    "kakuremichi_control_clients": ("gauge", "Agents and gateways (workers apart) by role and status (online, "
                                             "offline, stopped), as every control sharing the database sees them."),
    "kakuremichi_control_backend_health_transitions_total": (
        "counter", "Health changes agents reported, by tunnel backend and the status it changed to."),
}


@db_session
def client_statuses(db) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """kakuremichi_control_clients' samples, counted in the database."""
    rows = [("agent", status, n) for status, n in select((a.status, count(a)) for a in db.Agent)]
    rows += [("gateway", status, n) for status, n in select((g.status, count(g)) for g in db.Gateway
                                                            if g.worker_of is None)]
    return {("kakuremichi_control_clients", (("role", role), ("status", status))): float(n)
            for role, status, n in rows}


class Metrics:
    """Process-local counters; gauges are computed when scraped."""

    def __init__(self) -> None:
        self._counters: Counter[tuple[str, tuple[tuple[str, str], ...]]] = Counter()

    def inc(self, name: str, **labels: str) -> None:
        self._counters[name, tuple(sorted(labels.items()))] += 1

    def render(self, gauges: dict[tuple[str, tuple[tuple[str, str], ...]], float]) -> str:
        samples = {**self._counters, **gauges}
        lines = []
        for name, (kind, help_) in _HELP.items():
            lines += [f"# HELP {name} {help_}", f"# TYPE {name} {kind}"]
            for (sample, labels), value in sorted(samples.items()):
                if sample == name:
                    rendered = ",".join(f'{k}="{v}"' for k, v in labels)
                    lines.append(f"{name}{{{rendered}}} {value:g}" if rendered else f"{name} {value:g}")
        return "\n".join(lines) + "\n"
