"""The congestion window: RFC 6928's initial window, RFC 5681's slow start and congestion avoidance
(counting bytes acknowledged, so stretch ACKs count in full), and its reductions: halving on fast
retransmit (plus NewReno's inflation by three segments without SACK, RFC 6582) and one segment after a
retransmission timeout.

How much may be in flight is decided here; when a loss is declared, and what is resent, is the sender's
(tcp.Connection: RFC 6675's SACK recovery and NewReno's partial ACKs).
"""

from __future__ import annotations

UNLIMITED = 1 << 30  # ssthresh before the first loss


class CongestionWindow:
    """`cwnd` and `ssthresh` in bytes; `cwnd` stays below twice `send_buffer` (more can never be sent)."""

    __slots__ = ("cwnd", "ssthresh", "bytes_acked", "limit")

    def __init__(self, send_buffer: int) -> None:
        self.cwnd = self.ssthresh = 0  # until the handshake tells the segment size
        self.bytes_acked = 0
        self.limit = 2 * send_buffer

    def start(self, mss: int) -> None:
        """The initial window (RFC 6928): ten segments, at most max(2 segments, 14600 bytes)."""
        self.cwnd = min(10 * mss, max(2 * mss, 14600))
        self.ssthresh = UNLIMITED

    def grow(self, acked: int, mss: int) -> None:
        """New data acknowledged outside recovery (RFC 5681 §3.1)."""
        cwnd = self.cwnd
        if cwnd < self.ssthresh:
            cwnd += acked  # slow start
        else:
            self.bytes_acked += acked
            if self.bytes_acked >= cwnd:  # congestion avoidance: one segment per window acknowledged
                self.bytes_acked -= cwnd
                cwnd += mss
        self.cwnd = min(cwnd, self.limit + 4 * mss)

    def enter_recovery(self, flight: int, mss: int, sack: bool) -> None:
        """Fast retransmit (RFC 5681 §3.2): half the flight; without SACK inflated by the three segments
        the duplicate ACKs say have left the network."""
        self.ssthresh = max(flight // 2, 2 * mss)
        self.cwnd = self.ssthresh if sack else self.ssthresh + 3 * mss

    def inflate(self, mss: int) -> None:
        """NewReno: a duplicate ACK in recovery says a segment left the network; let a new one in."""
        self.cwnd += mss

    def partial_ack(self, acked: int, mss: int) -> None:
        """NewReno's deflation on a partial ACK (RFC 6582 §3.2 step 4)."""
        self.cwnd = max(self.cwnd - acked + (mss if acked >= mss else 0), mss)

    def leave_recovery(self, flight: int, mss: int) -> None:
        """A full ACK ends recovery (RFC 6582 §3.2 step 3): ssthresh, or less if little is in flight, so no
        burst follows."""
        self.cwnd = min(self.ssthresh, max(flight, mss) + mss)

    def timeout(self, flight: int, mss: int, first: bool) -> None:
        """A retransmission timeout: one segment (RFC 5681 §3.1's loss window); ssthresh halves the flight
        on the first timeout only, not on the backed-off ones that follow."""
        if first:
            self.ssthresh = max(flight // 2, 2 * mss)
        self.cwnd = mss
