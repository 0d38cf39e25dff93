"""The retransmission timeout of RFC 6298: a smoothed round-trip time and its variation, fed one sample
per flight, and the exponential backoff of §5.5.

Which segment is timed, and Karn's rule (no sample from a retransmitted one), stay with the sender: it
knows what it resent.
"""

from __future__ import annotations


class RttEstimator:
    """SRTT, RTTVAR and RTO (seconds), and how many times the timer has been backed off."""

    __slots__ = ("srtt", "rttvar", "rto", "backoff", "min_rto", "max_rto")

    def __init__(self, initial_rto: float, min_rto: float, max_rto: float) -> None:
        self.srtt: float | None = None  # no RTT measured yet
        self.rttvar = 0.0
        self.rto = initial_rto
        self.backoff = 0
        self.min_rto = min_rto
        self.max_rto = max_rto

    def sample(self, rtt: float) -> None:
        """Take one measured round trip (RFC 6298 §2)."""
        if self.srtt is None:
            self.srtt, self.rttvar = rtt, rtt / 2
        else:
            self.rttvar = 0.75 * self.rttvar + 0.25 * abs(self.srtt - rtt)
            self.srtt = 0.875 * self.srtt + 0.125 * rtt
        self.rto = min(max(self.srtt + max(0.001, 4 * self.rttvar), self.min_rto), self.max_rto)

    def timeout(self) -> float:
        """The RTO doubled once per backoff, capped at max_rto."""
        return min(self.rto * (1 << self.backoff), self.max_rto)
