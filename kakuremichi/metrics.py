"""What every gateway and agent tells Prometheus about its tunnel node: WireGuard peers (handshake age, bytes,
session), packets dropped by WireGuard and by the netstack by reason, unexpected errors contained (faults.py),
and the link to control.

Nothing here runs per packet: the counters are those the device and the stack keep anyway, read when
scraped, and the gauges are computed then too. The gateway and the agent add their own collectors.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from kakuremichi.controlclient import ControlClient
from kakuremichi.faults import Contained
from kakuremichi.tunnel import TunnelNode
from kakuremichi.wg import keys


class Collector:
    """A prometheus_client collector whose samples are made at each scrape, from what the process keeps anyway."""

    def describe(self) -> list[Metric]:
        return []  # samples vary with peers and tunnels: nothing to check at registration

    def collect(self) -> Iterator[Metric]:
        raise NotImplementedError


class NodeCollector(Collector):
    """The samples of one TunnelNode and its ControlClient; `faults()`: the role's other Contained boundaries."""

    def __init__(self, node: TunnelNode, client: ControlClient | None, role: str,
                 faults: Callable[[], list[Contained]] = list) -> None:
        self.node, self.client, self.role, self.faults = node, client, role, faults

    def collect(self) -> Iterator[Metric]:
        device = self.node.device
        age = GaugeMetricFamily("kakuremichi_wireguard_peer_last_handshake_age_seconds",
                                "Seconds since the last completed handshake with each peer (absent before the first).",
                                labels=["peer"])
        session = GaugeMetricFamily("kakuremichi_wireguard_peer_session",
                                    "1 while a WireGuard session with the peer is established.", labels=["peer"])
        received = CounterMetricFamily("kakuremichi_wireguard_peer_received_bytes",
                                       "WireGuard bytes received from each peer.", labels=["peer"])
        sent = CounterMetricFamily("kakuremichi_wireguard_peer_sent_bytes", "WireGuard bytes sent to each peer.",
                                   labels=["peer"])
        now = time.time()
        for key, peer in list(device.peers.items()):
            name = [keys.encode(key)]
            if peer.stats.last_handshake is not None:
                age.add_metric(name, max(0.0, now - peer.stats.last_handshake))
            session.add_metric(name, 1.0 if peer.current is not None else 0.0)
            received.add_metric(name, peer.stats.rx_bytes)
            sent.add_metric(name, peer.stats.tx_bytes)
        yield from (age, session, received, sent)
        yield by_reason("kakuremichi_wireguard_dropped", "WireGuard datagrams and packets dropped, by reason.",
                        device.dropped)
        yield by_reason("kakuremichi_netstack_dropped", "IP packets the userspace stack dropped, by reason.",
                        self.node.stack.core.drops)
        contained = CounterMetricFamily("kakuremichi_faults", "Unexpected errors contained at a boundary (that "
                                        "packet dropped or that connection closed), by site and exception type.",
                                        labels=["site", "kind"])
        for boundary in [self.node.interface.contained, self.node.stack.core.faults, *self.faults()]:
            for kind, count in sorted(boundary.counts.items()):
                contained.add_metric([boundary.site, kind], count)
        yield contained
        connected = GaugeMetricFamily("kakuremichi_control_connected", "1 while the link to control is up.",
                                      labels=["role"])
        connected.add_metric([self.role], 1.0 if self.client is not None and self.client.connected else 0.0)
        yield connected


def by_reason(name: str, help_: str, counts: dict[str, int]) -> CounterMetricFamily:
    family = CounterMetricFamily(name, help_, labels=["reason"])
    for reason, count in sorted(counts.items()):
        family.add_metric([reason], count)
    return family
