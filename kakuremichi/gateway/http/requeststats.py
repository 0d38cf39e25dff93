"""Per-tunnel request counts, bytes and latencies for the gateway's metrics: a few integers added once per
request, when its access line is written, and turned into Prometheus samples only when scraped."""

from __future__ import annotations

from bisect import bisect_left

# Upper bounds (seconds) of the latency histogram's buckets: Prometheus clients' defaults.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Status classes by hundreds; "none": no response was sent (the client left, or the exchange broke).
STATUS_CLASSES = ("none", "1xx", "2xx", "3xx", "4xx", "5xx")


class TunnelTraffic:
    """What the requests of one tunnel did on this gateway worker."""

    __slots__ = ("statuses", "bytes_in", "bytes_out", "latencies", "seconds")

    def __init__(self) -> None:
        self.statuses = [0] * len(STATUS_CLASSES)
        self.bytes_in = self.bytes_out = 0  # from clients / to clients (bodies, as the access line counts them)
        self.latencies = [0] * (len(LATENCY_BUCKETS) + 1)  # per bucket, not cumulative; the last is +Inf
        self.seconds = 0.0


class RequestStats:
    """Every tunnel's TunnelTraffic, keyed by (tunnel id, domain); requests that matched no route under ("", "")."""

    def __init__(self) -> None:
        self.tunnels: dict[tuple[str, str], TunnelTraffic] = {}

    def count(self, tunnel: tuple[str, str] | None, status: int, bytes_in: int, bytes_out: int,
              seconds: float) -> None:
        key = tunnel or ("", "")
        traffic = self.tunnels.get(key)
        if traffic is None:
            traffic = self.tunnels[key] = TunnelTraffic()
        traffic.statuses[status // 100 if 100 <= status < 600 else 0] += 1
        traffic.bytes_in += bytes_in
        traffic.bytes_out += bytes_out
        traffic.latencies[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        traffic.seconds += seconds
