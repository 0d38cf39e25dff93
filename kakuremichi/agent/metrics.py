"""The agent's own metrics and status, per tunnel: connections from gateways (open now, relayed, failed to reach
the target) and the bytes they carried; counted once per connection, read when scraped."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from kakuremichi.metrics import Collector


class TunnelCounts:
    """Per tunnel domain: [connections relayed, target unreachable, bytes to the target, bytes from it (counted
    when the connection ends: a gateway keeps its connections for the next request)]."""

    def __init__(self) -> None:
        self.domains: dict[str, list[int]] = {}

    def _counts(self, domain: str) -> list[int]:
        counts = self.domains.get(domain)
        if counts is None:
            counts = self.domains[domain] = [0, 0, 0, 0]
        return counts

    def opened(self, domain: str) -> None:
        self._counts(domain)[0] += 1

    def finished(self, domain: str, to_target: int, from_target: int) -> None:
        counts = self._counts(domain)
        counts[2] += to_target
        counts[3] += from_target

    def unreachable(self, domain: str) -> None:
        self._counts(domain)[1] += 1


class AgentCollector(Collector):
    """A prometheus_client collector of one Agent."""

    def __init__(self, agent) -> None:
        self.agent = agent

    def collect(self) -> Iterator[Metric]:
        done = CounterMetricFamily("kakuremichi_agent_connections", "Tunnel connections relayed to their target, "
                                   "per tunnel.", labels=["domain"])
        failed = CounterMetricFamily("kakuremichi_agent_target_unreachable",
                                     "Tunnel connections whose target could not be reached, per tunnel.",
                                     labels=["domain"])
        to_target = CounterMetricFamily("kakuremichi_agent_target_sent_bytes",
                                        "Bytes sent to the target, per tunnel (connections that ended).",
                                        labels=["domain"])
        from_target = CounterMetricFamily("kakuremichi_agent_target_received_bytes",
                                          "Bytes received from the target, per tunnel (connections that ended).",
                                          labels=["domain"])
        for domain, (connections, unreachable, sent, received) in sorted(self.agent.counts.domains.items()):
            done.add_metric([domain], connections)
            failed.add_metric([domain], unreachable)
            to_target.add_metric([domain], sent)
            from_target.add_metric([domain], received)
        active = GaugeMetricFamily("kakuremichi_agent_active_connections", "Tunnel connections open now, per tunnel.",
                                   labels=["domain"])
        for domain, count in sorted(active_by_domain(self.agent).items()):
            active.add_metric([domain], count)
        yield from (done, failed, to_target, from_target, active)


def active_by_domain(agent) -> dict[str, int]:
    counts = dict.fromkeys((domain for domain, _ in agent.targets.values()), 0)
    for address, _ in list(agent._active.values()):
        entry = agent.targets.get(address)
        if entry is not None:
            counts[entry[0]] = counts.get(entry[0], 0) + 1
    return counts


def tunnels(agent) -> list[dict]:
    """The tunnels this agent serves, for `kakuremichi status`."""
    active = active_by_domain(agent)
    return [{"domain": domain, "address": address, "target": str(target), "activeConnections": active.get(domain, 0),
             "connections": agent.counts.domains.get(domain, [0])[0]}
            for address, (domain, target) in sorted(agent.targets.items(), key=lambda item: item[1][0])]
