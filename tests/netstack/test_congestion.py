"""CongestionWindow: initial window, slow start, congestion avoidance and the reductions on loss, in bytes."""

from __future__ import annotations

from kakuremichi.netstack.congestion import UNLIMITED, CongestionWindow

MSS = 1000


def _window(cwnd: int, ssthresh: int = UNLIMITED, send_buffer: int = 1 << 20) -> CongestionWindow:
    window = CongestionWindow(send_buffer)
    window.cwnd, window.ssthresh = cwnd, ssthresh
    return window


def test_the_initial_window_is_ten_segments_within_rfc_6928s_bounds():
    window = CongestionWindow(1 << 20)
    window.start(1000)
    assert window.cwnd == 10_000 and window.ssthresh == UNLIMITED
    window.start(1460)
    assert window.cwnd == 14_600
    window.start(9000)
    assert window.cwnd == 18_000  # two segments when 14600 bytes is less


def test_slow_start_grows_by_every_byte_acknowledged():
    window = _window(10_000)
    window.grow(3000, MSS)  # a stretch ACK counts in full
    assert window.cwnd == 13_000


def test_congestion_avoidance_grows_one_segment_per_window_acknowledged():
    window = _window(10_000, ssthresh=10_000)
    for _ in range(9):
        window.grow(MSS, MSS)
    assert window.cwnd == 10_000
    window.grow(MSS, MSS)
    assert window.cwnd == 11_000 and window.bytes_acked == 0


def test_the_window_never_grows_past_twice_the_send_buffer():
    window = _window(30_000, send_buffer=10_000)
    window.grow(10_000, MSS)
    assert window.cwnd == 2 * 10_000 + 4 * MSS


def test_fast_retransmit_halves_the_flight_and_without_sack_inflates_by_three_segments():
    with_sack = _window(40_000)
    with_sack.enter_recovery(30_000, MSS, sack=True)
    assert with_sack.ssthresh == with_sack.cwnd == 15_000
    without = _window(40_000)
    without.enter_recovery(30_000, MSS, sack=False)
    assert without.ssthresh == 15_000 and without.cwnd == 18_000
    without.inflate(MSS)
    assert without.cwnd == 19_000
    tiny = _window(40_000)
    tiny.enter_recovery(1000, MSS, sack=True)
    assert tiny.ssthresh == 2 * MSS


def test_a_partial_ack_deflates_by_what_it_acknowledged_and_adds_back_one_segment():
    window = _window(10_000)
    window.partial_ack(3000, MSS)
    assert window.cwnd == 8000
    window.partial_ack(500, MSS)
    assert window.cwnd == 7500
    window.partial_ack(50_000, MSS)
    assert window.cwnd == MSS


def test_leaving_recovery_caps_the_window_at_what_is_in_flight_plus_one_segment():
    window = _window(20_000, ssthresh=10_000)
    window.leave_recovery(3000, MSS)
    assert window.cwnd == 4000
    window.leave_recovery(50_000, MSS)
    assert window.cwnd == 10_000


def test_a_timeout_leaves_one_segment_and_halves_ssthresh_only_the_first_time():
    window = _window(40_000)
    window.timeout(30_000, MSS, first=True)
    assert window.cwnd == MSS and window.ssthresh == 15_000
    window.timeout(MSS, MSS, first=False)
    assert window.cwnd == MSS and window.ssthresh == 15_000
