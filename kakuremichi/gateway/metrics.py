"""The gateway's own metrics and status, per tunnel: requests by status class, bytes each way, a latency
histogram and the requests in flight; read from the proxy's RequestStats and route holds when scraped."""

from __future__ import annotations

from collections.abc import Iterator
from itertools import accumulate

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from kakuremichi.gateway.http.requeststats import LATENCY_BUCKETS, STATUS_CLASSES
from kakuremichi.metrics import Collector

_TUNNEL = ["tunnel", "domain"]


class GatewayCollector(Collector):
    """A prometheus_client collector of one gateway worker's proxy (`gateway.proxy`, None until it serves)."""

    def __init__(self, gateway) -> None:
        self.gateway = gateway

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily("kakuremichi_gateway_requests", "Requests per tunnel, by status class "
                                       "(none: no response was sent).", labels=[*_TUNNEL, "status"])
        received = CounterMetricFamily("kakuremichi_gateway_request_bytes",
                                       "Body bytes received from clients, per tunnel.", labels=_TUNNEL)
        sent = CounterMetricFamily("kakuremichi_gateway_response_bytes", "Body bytes sent to clients, per tunnel.",
                                   labels=_TUNNEL)
        latency = HistogramMetricFamily("kakuremichi_gateway_request_duration_seconds",
                                        "Time from a request's head to the end of its response, per tunnel.",
                                        labels=_TUNNEL)
        active = GaugeMetricFamily("kakuremichi_gateway_active_requests", "Requests being relayed now, per tunnel.",
                                   labels=_TUNNEL)
        proxy = self.gateway.proxy
        if proxy is not None:
            for (tunnel, domain), traffic in sorted(proxy.requests.tunnels.items()):
                labels = [tunnel, domain]
                for status, count in zip(STATUS_CLASSES, traffic.statuses):
                    if count:
                        requests.add_metric([*labels, status], count)
                received.add_metric(labels, traffic.bytes_in)
                sent.add_metric(labels, traffic.bytes_out)
                bounds = [str(b) for b in LATENCY_BUCKETS] + ["+Inf"]
                latency.add_metric(labels, list(zip(bounds, accumulate(traffic.latencies))), traffic.seconds)
            for route, count in proxy.routes.in_flight().items():
                active.add_metric([route.tunnel_id or "", route.domain], count)
        yield from (requests, received, sent, latency, active)
        exits = GaugeMetricFamily("kakuremichi_gateway_exit_connections", "Exit (SOCKS/HTTP proxy) connections open.")
        exits.add_metric([], self.gateway.exit.active_connections)
        yield exits


def faults(gateway) -> list:
    """The gateway's Contained boundaries besides its node's: client connections, exit connections."""
    return [gateway.exit.faults] + ([gateway.proxy.faults] if gateway.proxy is not None else [])


def tunnels(gateway) -> list[dict]:
    """The routes this gateway worker serves, for `kakuremichi status`."""
    proxy = gateway.proxy
    in_flight = {route.domain: count for route, count in proxy.routes.in_flight().items()} if proxy else {}
    traffic = proxy.requests.tunnels if proxy else {}
    out = []
    for route in sorted(gateway.routes, key=lambda r: r.domain):
        counted = traffic.get((route.tunnel_id or "", route.domain))
        out.append({"domain": route.domain, "tunnelId": route.tunnel_id, "agentAddress": route.address,
                    "enabled": route.enabled, "agentStopped": route.agent_stopped,
                    "activeRequests": in_flight.get(route.domain, 0),
                    "requests": sum(counted.statuses) if counted else 0})
    return out
